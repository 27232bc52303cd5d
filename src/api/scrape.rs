//! `GET /metrics` on a listener of its own (`[metrics] listen`), for
//! daemons without the HTTP API or that keep metrics off the API's
//! address. No key: bind it to loopback or a private network.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use super::{Body, full};
use crate::config::MetricsConfig;
use crate::core::Locker;
use crate::metrics::{CONTENT_TYPE, metrics};

/// The metrics as an HTTP response (the queue and cache read from `core`).
pub(crate) fn response(core: Option<&Locker>) -> Response<Body> {
    let mut r = Response::new(full(metrics().render(core)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(CONTENT_TYPE),
    );
    r
}

/// A running metrics listener.
pub struct MetricsServer {
    rt: tokio::runtime::Runtime,
    stop: Arc<tokio::sync::Notify>,
    addr: SocketAddr,
}

impl MetricsServer {
    pub fn start(core: Arc<Locker>, cfg: &MetricsConfig) -> anyhow::Result<MetricsServer> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("metrics")
            .enable_all()
            .build()?;
        let addr: SocketAddr = cfg.listen.parse().context("metrics.listen")?;
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(addr))
            .with_context(|| format!("metrics: cannot listen on {addr}"))?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(tokio::sync::Notify::new());
        let stopped = stop.clone();
        rt.spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = stopped.notified() => return,
                    r = listener.accept() => match r {
                        Ok(x) => x,
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let core = core.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let core = core.clone();
                        async move {
                            let path_ok = req.uri().path() == "/metrics";
                            let method_ok =
                                matches!(*req.method(), hyper::Method::GET | hyper::Method::HEAD);
                            let resp = if path_ok && method_ok {
                                // Reading the queue takes the core's lock.
                                tokio::task::spawn_blocking(move || response(Some(&core)))
                                    .await
                                    .unwrap_or_else(|_| {
                                        let mut r = Response::new(full("scrape failed\n"));
                                        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                                        r
                                    })
                            } else {
                                let mut r = Response::new(full("only GET /metrics here\n"));
                                *r.status_mut() = if path_ok {
                                    StatusCode::METHOD_NOT_ALLOWED
                                } else {
                                    StatusCode::NOT_FOUND
                                };
                                r
                            };
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(30))
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        tracing::info!(listen = %addr, "metrics serving (GET /metrics)");
        Ok(MetricsServer { rt, stop, addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn shutdown(self) {
        self.stop.notify_one();
        self.rt.shutdown_timeout(Duration::from_secs(1));
    }
}
