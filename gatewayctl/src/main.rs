//! gatewayctl: the operator's command line for gatewayd, over the gRPC admin API.
fn main() {
    eprintln!("gatewayctl: not built yet");
    std::process::exit(1);
}
