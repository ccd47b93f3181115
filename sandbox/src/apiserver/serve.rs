//! The listener: one loopback port speaking both plain HTTP (kube-rs clients) and HTTPS with a
//! self-signed certificate (kubectl sends credentials only over TLS), told apart by the first byte.

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, pki_types::PrivateKeyDer, pki_types::PrivatePkcs8KeyDer};
use tokio_util::sync::CancellationToken;

/// A self-signed certificate for 127.0.0.1/localhost: (PEM certificate, acceptor).
pub fn tls() -> std::io::Result<(String, TlsAcceptor)> {
    tls_for(&["127.0.0.1".to_string(), "localhost".to_string()])
}

/// A self-signed certificate for `names` (DNS names or IP addresses): (PEM certificate, acceptor).
pub fn tls_for(names: &[String]) -> std::io::Result<(String, TlsAcceptor)> {
    let err = |e: String| std::io::Error::other(e);
    let ck = rcgen::generate_simple_self_signed(names.to_vec()).map_err(|e| err(e.to_string()))?;
    let pem = ck.cert.pem();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .map_err(|e| err(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((pem, TlsAcceptor::from(Arc::new(cfg))))
}

/// Serve `app` until `cancel`.
pub async fn serve(listener: TcpListener, app: Router, acceptor: TlsAcceptor, cancel: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(_) => continue,
            },
        };
        let app = app.clone();
        let acceptor = acceptor.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let mut first = [0u8; 1];
            let is_tls = matches!(stream.peek(&mut first).await, Ok(1) if first[0] == 0x16);
            let service = TowerToHyperService::new(app);
            let builder = Builder::new(TokioExecutor::new());
            if is_tls {
                let Ok(tls) = acceptor.accept(stream).await else { return };
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = conn => {}
                }
            } else {
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = conn => {}
                }
            }
        });
    }
}
