//! One node of a run: its tool check, timeout and retries ([`Engine::run_node`]), and what
//! each kind of node does (an LLM call, a tool call, a message, a script, a step).

use super::*;

impl Engine {
    pub(super) async fn run_node(
        &self,
        workflow: &Workflow,
        index: usize,
        inputs: &Value,
        nodes: &Value,
        origin: Option<&RunOrigin>,
    ) -> (Result<Value, String>, u32) {
        let Some(node) = workflow.nodes.get(index) else {
            return (Err(format!("node {index} is not in the workflow")), 0);
        };
        let id = node.id.as_str();
        // Validation refuses an undeclared tool; checked again so no file reaches a tool it
        // does not declare.
        for (_, tool) in node.tools() {
            if !workflow.tools.iter().any(|t| t == tool) {
                tracing::warn!(message = "Workflow node refused: its tool is not declared.", workflow = %workflow.name, node = %id, tool);
                metrics::counter!("gateway_tool_refusals_total", "tool" => tool.to_owned())
                    .increment(1);
                return (Err(validate::undeclared_tool(tool, &workflow.tools)), 0);
            }
        }
        // Validation keeps both in range; bounded again so no value overflows a timer.
        let timeout = node
            .timeout
            .get()
            .clamp(Duration::from_millis(1), validate::MAX_TIMEOUT);
        let mut last = String::new();
        let tries = node.retries.min(validate::MAX_RETRIES).saturating_add(1);
        for attempt in 1..=tries {
            let outcome = tokio::time::timeout(
                timeout,
                self.execute_kind(&node.kind, inputs, nodes, origin),
            )
            .await;
            match outcome {
                Ok(Ok(value)) => return (Ok(value), attempt),
                Ok(Err(e)) => last = e,
                Err(_) => last = format!("timed out after {timeout:?}"),
            }
            if attempt < tries {
                tracing::warn!(message = "Workflow node failed; retrying.", workflow = %workflow.name, node = %id, attempt, error = %last);
                tokio::time::sleep(Duration::from_millis(100u64 << attempt.min(6))).await;
            }
        }
        (Err(last), tries)
    }

    pub(super) async fn execute_kind(
        &self,
        kind: &NodeKind,
        inputs: &Value,
        nodes: &Value,
        origin: Option<&RunOrigin>,
    ) -> Result<Value, String> {
        let vars = Vars {
            inputs,
            nodes,
            item: None,
        };
        match kind {
            NodeKind::Llm(s) => self.execute_step(&Step::Llm(s.clone()), vars, origin).await,
            NodeKind::Tool(s) => {
                self.execute_step(&Step::Tool(s.clone()), vars, origin)
                    .await
            }
            NodeKind::Code(s) => {
                self.execute_step(&Step::Code(s.clone()), vars, origin)
                    .await
            }
            NodeKind::Condition(c) => {
                let ast = self.sandbox.compile(&c.expr).map_err(|e| e.to_string())?;
                let sandbox = self.sandbox.clone();
                let (inputs, nodes) = (inputs.clone(), nodes.clone());
                tokio::task::spawn_blocking(move || sandbox.eval_bool(&ast, &inputs, &nodes))
                    .await
                    .map_err(|e| format!("script task failed: {e}"))?
                    .map(Value::Bool)
                    .map_err(|e| e.to_string())
            }
            NodeKind::Foreach(f) => {
                let items = template::parse(&f.items)
                    .map_err(|e| e.to_string())?
                    .render_value(&|r| vars.resolve(r))
                    .map_err(|e| e.to_string())?;
                let items = f.items_from(items)?;
                // Validation keeps `concurrency` in 1..=MAX_CONCURRENCY; clamped again so no
                // value can reach the semaphore's own limit.
                let limit =
                    tokio::sync::Semaphore::new(f.concurrency.clamp(1, validate::MAX_CONCURRENCY));
                let results = futures_util::future::join_all(items.iter().enumerate().map(
                    |(index, item)| {
                        let limit = &limit;
                        async move {
                            let _permit = limit.acquire().await.map_err(|e| e.to_string())?;
                            let vars = Vars {
                                inputs,
                                nodes,
                                item: Some((item, index)),
                            };
                            self.execute_step(&f.step, vars, origin).await
                        }
                    },
                ))
                .await;
                results
                    .into_iter()
                    .enumerate()
                    .map(|(i, r)| r.map_err(|e| format!("item {i}: {e}")))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Value::Array)
            }
            NodeKind::Message(m) => {
                let render = |text: &str| -> Result<String, String> {
                    template::parse(text)
                        .map_err(|e| e.to_string())?
                        .render(&|r| vars.resolve(r))
                        .map_err(|e| e.to_string())
                };
                let text = render(&m.text)?;
                let target = match m.target()? {
                    Target::Origin => {
                        let Some(o) = origin else {
                            // `start` refuses such a run; one stored by an older version can
                            // still get here on resume. Nothing is sent, so the node fails.
                            return Err("the run has no origin chat to send to; start it from a chat or with `gatewayctl workflows run --to CHANNEL:CHAT`".to_owned());
                        };
                        MessageTarget::Chat {
                            channel: o.channel,
                            chat_id: o.chat_id.clone(),
                        }
                    }
                    Target::Chat { channel, chat_id } => MessageTarget::Chat {
                        channel: render(&channel)?.parse()?,
                        chat_id: render(&chat_id)?,
                    },
                    Target::User(user) => {
                        let user = render(&user)?;
                        MessageTarget::User(
                            user.trim()
                                .parse()
                                .map_err(|_| format!("`{user}` is not a user id"))?,
                        )
                    }
                };
                let id = self
                    .services
                    .send_message_for(target, &text, origin)
                    .await?;
                Ok(serde_json::json!({"outbox_id": id, "text": text}))
            }
        }
    }

    pub(super) async fn execute_step(
        &self,
        step: &Step,
        vars: Vars<'_>,
        origin: Option<&RunOrigin>,
    ) -> Result<Value, String> {
        let render = |text: &str| -> Result<String, String> {
            template::parse(text)
                .map_err(|e| e.to_string())?
                .render(&|r| vars.resolve(r))
                .map_err(|e| e.to_string())
        };
        match step {
            Step::Llm(s) => {
                let prompt = render(&s.prompt)?;
                let system = s.system.as_deref().map(render).transpose()?;
                self.services
                    .complete(system.as_deref(), &prompt)
                    .await
                    .map(Value::String)
            }
            Step::Tool(s) => {
                let args =
                    template::render_tree(&Value::Object(s.args.clone()), &|r| vars.resolve(r))
                        .map_err(|e| e.to_string())?;
                self.services.call_tool(&s.tool, args, origin).await
            }
            Step::Code(s) => {
                let sandbox = self.sandbox.clone();
                let source = s.script.clone();
                let (inputs, nodes) = (vars.inputs.clone(), vars.nodes.clone());
                let item = vars.item.map(|(v, i)| (v.clone(), i));
                tokio::task::spawn_blocking(move || -> Result<Value, String> {
                    match item {
                        None => {
                            let ast = sandbox.compile(&source).map_err(|e| e.to_string())?;
                            sandbox
                                .run(&ast, &inputs, &nodes)
                                .map_err(|e| e.to_string())
                        }
                        Some((item, index)) => {
                            let ast = sandbox.compile_item(&source).map_err(|e| e.to_string())?;
                            sandbox
                                .run_item(&ast, &inputs, &nodes, &item, index)
                                .map_err(|e| e.to_string())
                        }
                    }
                })
                .await
                .map_err(|e| format!("script task failed: {e}"))?
            }
        }
    }
}
