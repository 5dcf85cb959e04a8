//! The "pingora passthrough" baseline of `bench/run`: a minimal pingora 0.9 proxy that forwards
//! every request to one upstream, with no authentication, no logging and no header work, so
//! that the benchmark can show what authgate's own work costs on top of pingora itself.
//!
//! ```sh
//! cargo run --release --example bench_passthrough -- \
//!     --listen 127.0.0.1:6190 --upstream 127.0.0.1:8000 --threads 2
//! ```
//!
//! Upstream connections are plain HTTP/1.1 and kept alive (pingora's connection pool). The
//! process exits on SIGINT at once and on SIGTERM without a grace period.

use std::net::SocketAddr;

use async_trait::async_trait;
use clap::Parser;
use pingora::prelude::{HttpPeer, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;

/// A pingora reverse proxy with no features: every request goes to `--upstream`.
#[derive(Parser, Debug)]
#[command(name = "bench_passthrough")]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:6190.
    #[arg(long)]
    listen: SocketAddr,
    /// Upstream address (IP:port, plain HTTP), e.g. 127.0.0.1:8000.
    #[arg(long)]
    upstream: SocketAddr,
    /// Worker threads of the proxy service.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

struct Passthrough {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Passthrough {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> pingora::Result<Box<HttpPeer>> {
        // No TLS, no SNI: a plain keep-alive HTTP/1.1 connection from pingora's pool.
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let args = Args::parse();
    if args.threads == 0 {
        eprintln!("bench_passthrough: --threads must be at least 1");
        std::process::exit(2);
    }

    let mut conf = match ServerConf::new() {
        Some(conf) => conf,
        None => {
            eprintln!("bench_passthrough: cannot build pingora's default server configuration");
            std::process::exit(1);
        }
    };
    conf.threads = args.threads;
    // A benchmark tool: stop at once on SIGTERM, no draining.
    conf.grace_period_seconds = Some(0);
    conf.graceful_shutdown_timeout_seconds = Some(0);

    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut proxy = pingora::proxy::http_proxy_service(
        &server.configuration,
        Passthrough {
            upstream: args.upstream,
        },
    );
    proxy.add_tcp(&args.listen.to_string());
    server.add_service(proxy);

    eprintln!(
        "bench_passthrough: listening on {}, forwarding to {} ({} threads)",
        args.listen, args.upstream, args.threads
    );
    server.run_forever();
}
