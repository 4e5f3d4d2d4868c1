//! [`Graph`]: a workflow's nodes as a graph over their positions in the file, with the queries the
//! validator and the scheduler need (topological order, strongly connected components, ancestor
//! bit sets), each linear in the graph or better and total on an invalid graph.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};

use super::{Node, Workflow};

/// The nodes of a workflow as a graph over their positions in the file, built in one pass
/// (O(nodes + edges)). Edges go to the first node with an id; unknown ids are left out and a
/// repeated `after` entry counts once. Every query below is linear in the graph or better, so a
/// workflow of [`crate::workflow::validate::MAX_NODES`] nodes is checked and scheduled in milliseconds.
#[derive(Debug, Clone)]
pub struct Graph<'a> {
    workflow: &'a Workflow,
    index: HashMap<&'a str, usize>,
    up: Vec<Vec<usize>>,
    down: Vec<Vec<usize>>,
}

impl<'a> Graph<'a> {
    /// Indexes `workflow`'s nodes and edges.
    pub fn new(workflow: &'a Workflow) -> Self {
        let n = workflow.nodes.len();
        let mut index: HashMap<&str, usize> = HashMap::with_capacity(n);
        for (i, node) in workflow.nodes.iter().enumerate() {
            index.entry(node.id.as_str()).or_insert(i);
        }
        let mut up: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut down: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut seen: HashSet<usize> = HashSet::new();
        for (i, node) in workflow.nodes.iter().enumerate() {
            seen.clear();
            for edge in &node.after {
                if let Some(&u) = index.get(edge.node.as_str())
                    && seen.insert(u)
                {
                    up[i].push(u);
                    down[u].push(i);
                }
            }
        }
        Self {
            workflow,
            index,
            up,
            down,
        }
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.up.len()
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.up.is_empty()
    }

    /// The position of the (first) node with this id.
    pub fn index(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// The node at a position.
    pub fn node(&self, i: usize) -> &'a Node {
        &self.workflow.nodes[i]
    }

    /// The known nodes `i` waits for, each once, in the order written.
    pub fn upstream(&self, i: usize) -> &[usize] {
        &self.up[i]
    }

    /// The nodes that wait for `i`, in file order.
    pub fn downstream(&self, i: usize) -> &[usize] {
        &self.down[i]
    }

    /// Every node after its dependencies (Kahn's algorithm; among nodes ready together, file
    /// order), or `None` when a cycle leaves some nodes unplaced.
    pub fn topo_order(&self) -> Option<Vec<usize>> {
        let mut waiting: Vec<usize> = self.up.iter().map(Vec::len).collect();
        let mut ready: BinaryHeap<Reverse<usize>> = waiting
            .iter()
            .enumerate()
            .filter(|(_, w)| **w == 0)
            .map(|(i, _)| Reverse(i))
            .collect();
        let mut order = Vec::with_capacity(self.len());
        while let Some(Reverse(i)) = ready.pop() {
            order.push(i);
            for &d in &self.down[i] {
                waiting[d] -= 1;
                if waiting[d] == 0 {
                    ready.push(Reverse(d));
                }
            }
        }
        (order.len() == self.len()).then_some(order)
    }

    /// The strongly connected components (Kosaraju's algorithm, iterative): each node's
    /// component number, and the components in topological order (a component comes after
    /// every component it depends on), each listing its nodes in file order.
    fn components(&self) -> (Vec<usize>, Vec<Vec<usize>>) {
        let n = self.len();
        // First pass: finishing order of a DFS along upstream → downstream edges.
        let mut visited = vec![false; n];
        let mut finished = Vec::with_capacity(n);
        for start in 0..n {
            if visited[start] {
                continue;
            }
            visited[start] = true;
            let mut stack = vec![(start, 0usize)];
            while let Some((node, child)) = stack.last_mut() {
                let node = *node;
                if let Some(&next) = self.down[node].get(*child) {
                    *child += 1;
                    if !visited[next] {
                        visited[next] = true;
                        stack.push((next, 0));
                    }
                } else {
                    finished.push(node);
                    stack.pop();
                }
            }
        }
        // Second pass, on the reversed edges in reverse finishing order: each tree is one
        // component, and they come out sources first.
        const NONE: usize = usize::MAX;
        let mut comp = vec![NONE; n];
        let mut comps: Vec<Vec<usize>> = Vec::new();
        for &start in finished.iter().rev() {
            if comp[start] != NONE {
                continue;
            }
            let c = comps.len();
            let mut members = Vec::new();
            comp[start] = c;
            let mut stack = vec![start];
            while let Some(node) = stack.pop() {
                members.push(node);
                for &u in &self.up[node] {
                    if comp[u] == NONE {
                        comp[u] = c;
                        stack.push(u);
                    }
                }
            }
            members.sort_unstable();
            comps.push(members);
        }
        (comp, comps)
    }

    /// One cycle per strongly connected component that has one (two or more nodes, or a node
    /// after itself): the shortest way from its first node in file order back to it, in the
    /// direction work flows. Sorted by that first node.
    pub fn cycles(&self) -> Vec<Vec<String>> {
        let (comp, comps) = self.components();
        let mut starts: Vec<usize> = comps
            .iter()
            .filter(|m| m.len() > 1 || self.up[m[0]].contains(&m[0]))
            .map(|m| m[0])
            .collect();
        starts.sort_unstable();
        let mut parent = vec![usize::MAX; self.len()];
        starts
            .into_iter()
            .map(|start| {
                // Breadth-first inside the component until an edge leads back to `start`.
                let c = comp[start];
                let mut queue = VecDeque::from([start]);
                let mut touched = vec![start];
                parent[start] = start;
                let mut last = start;
                'search: while let Some(node) = queue.pop_front() {
                    for &next in &self.down[node] {
                        if next == start {
                            last = node;
                            break 'search;
                        }
                        if comp[next] == c && parent[next] == usize::MAX {
                            parent[next] = node;
                            touched.push(next);
                            queue.push_back(next);
                        }
                    }
                }
                let mut path = vec![start];
                let mut at = last;
                while at != start {
                    path.push(at);
                    at = parent[at];
                }
                path[1..].reverse();
                path.push(start);
                for t in touched {
                    parent[t] = usize::MAX;
                }
                path.into_iter()
                    .map(|i| self.workflow.nodes[i].id.clone())
                    .collect()
            })
            .collect()
    }

    /// Which nodes run before which: one bit set of ancestors per node, built in one pass over
    /// the components in topological order. Nodes on a cycle are their own ancestors.
    pub fn reach(&self) -> Reach {
        let n = self.len();
        let words = n.div_ceil(64);
        let mut bits = vec![0u64; n * words];
        let (comp, comps) = self.components();
        let mut row = vec![0u64; words];
        for members in &comps {
            row.iter_mut().for_each(|w| *w = 0);
            let c = comp[members[0]];
            let cyclic = members.len() > 1 || self.up[members[0]].contains(&members[0]);
            for &m in members {
                for &u in &self.up[m] {
                    if comp[u] != c {
                        let from = &bits[u * words..(u + 1) * words];
                        for (w, f) in row.iter_mut().zip(from) {
                            *w |= f;
                        }
                        row[u / 64] |= 1 << (u % 64);
                    }
                }
                if cyclic {
                    row[m / 64] |= 1 << (m % 64);
                }
            }
            for &m in members {
                bits[m * words..(m + 1) * words].copy_from_slice(&row);
            }
        }
        Reach { words, bits }
    }
}

/// Ancestor sets of every node of a [`Graph`], as bits (n²/8 bytes: 12.5 MB at 10,000 nodes).
#[derive(Debug, Clone)]
pub struct Reach {
    words: usize,
    bits: Vec<u64>,
}

impl Reach {
    /// Whether node `a` runs before node `node` (is upstream of it, directly or not).
    pub fn is_ancestor(&self, a: usize, node: usize) -> bool {
        self.bits
            .get(node * self.words + a / 64)
            .is_some_and(|w| w & (1 << (a % 64)) != 0)
    }
}
