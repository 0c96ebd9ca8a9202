//! Start-up and shutdown: binds the shards and the HTTP server, and stops them.

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::config::{Config, ConfigError};
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::room::Registry;
use crate::shard::{default_bind_ips, Command, Shard, ShardHandle};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("cannot bind HTTP on {addr} (http.listen): {source}")]
    Http {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the media shards: {0}")]
    Media(std::io::Error),
    #[error("the crypto provider cannot generate a DTLS certificate")]
    Certificate,
}

/// A running Switchboard node.
pub struct Server {
    http_addr: SocketAddr,
    media_addrs: Vec<SocketAddr>,
    shards: Vec<ShardHandle>,
    threads: Vec<JoinHandle<()>>,
    stop_http: Option<oneshot::Sender<()>>,
    http_task: Option<tokio::task::JoinHandle<()>>,
    registry: Arc<Registry>,
    draining: Arc<std::sync::atomic::AtomicBool>,
}

impl Server {
    /// Validates `config`, binds every socket and starts serving. Call inside a tokio runtime.
    pub async fn start(config: Config) -> Result<Server, StartError> {
        config.validate()?;
        let verifier = config.token_verifier()?.map(Arc::new);
        let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let provider = crate::crypto::install().ok_or(StartError::Certificate)?;
        // One certificate for the process: generating one per session costs milliseconds.
        let dtls_cert = provider
            .dtls_provider
            .generate_certificate()
            .ok_or(StartError::Certificate)?;

        let bind_ips = if config.media.bind_ips.is_empty() {
            default_bind_ips()
        } else {
            config.media.bind_ips.clone()
        };
        let metrics = Arc::new(Metrics::new());
        let shard_count = config.shard_count();
        let mut shards = Vec::with_capacity(shard_count);
        let mut handles = Vec::with_capacity(shard_count);
        let mut media_addrs = Vec::new();
        for index in 0..shard_count {
            let (shard, handle) = Shard::bind(
                index,
                &config,
                &bind_ips,
                dtls_cert.clone(),
                metrics.clone(),
            )
            .map_err(StartError::Media)?;
            media_addrs.extend_from_slice(shard.local_addrs());
            shards.push(shard);
            handles.push(handle);
        }
        let registry = Arc::new(Registry::default());
        let mut threads = Vec::with_capacity(shard_count);
        for shard in shards {
            let thread = shard
                .spawn(handles.clone(), registry.clone(), metrics.clone())
                .map_err(StartError::Media)?;
            threads.push(thread);
        }

        let listener = tokio::net::TcpListener::bind(config.http.listen)
            .await
            .map_err(|source| StartError::Http {
                addr: config.http.listen,
                source,
            })?;
        let http_addr = listener.local_addr().map_err(|source| StartError::Http {
            addr: config.http.listen,
            source,
        })?;
        let state = Arc::new(AppState {
            config: Arc::new(config),
            registry: registry.clone(),
            metrics,
            shards: handles.clone(),
            next_shard: AtomicUsize::new(0),
            verifier: verifier.clone(),
            draining: Arc::clone(&draining),
        });
        let (stop_http, stopped) = oneshot::channel::<()>();
        let http_task = tokio::spawn(http::serve(listener, state, async {
            let _ = stopped.await;
        }));
        tracing::info!(%http_addr, media = ?media_addrs, shards = shard_count, "switchboard listening on http://{http_addr}");
        match &verifier {
            Some(v) => tracing::info!(keys = ?v, "auth is on: offers need a bearer token"),
            None => tracing::warn!(
                "auth is OFF (auth.enabled = false): anyone who reaches http://{http_addr} may publish to and watch any room"
            ),
        }
        Ok(Server {
            http_addr,
            media_addrs,
            shards: handles,
            threads,
            stop_http: Some(stop_http),
            http_task: Some(http_task),
            registry,
            draining,
        })
    }

    /// Starts draining: new offers get 503 with `Retry-After`, `/readyz` says 503,
    /// viewers' event streams get `draining`; running sessions go on.
    pub fn drain(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            sessions = self.session_count(),
            "draining: no new sessions; the running ones go on until they end"
        );
    }

    /// Waits until every session has ended or `timeout` has passed; true if all
    /// ended.
    pub async fn drained(&self, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.session_count() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        true
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Every local address a media socket is bound to.
    pub fn media_addrs(&self) -> &[SocketAddr] {
        &self.media_addrs
    }

    pub fn session_count(&self) -> usize {
        self.registry.session_count()
    }

    /// The shard a session lives on (from its key in the `Location` URL).
    pub fn session_shard(&self, session: &str) -> Option<usize> {
        let key = crate::peer::PeerKey::parse(session)?;
        self.registry.session(key).map(|e| e.shard)
    }

    /// Resolves with a shard's index when its thread has ended while the server
    /// is running: its sessions are gone and it takes no more. The
    /// `switchboard` binary then exits non-zero so its supervisor restarts it.
    pub async fn shard_failure(&self) -> usize {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
        loop {
            tick.tick().await;
            if self.stop_http.is_none() {
                continue; // shutting down: shards end on purpose
            }
            if let Some(dead) = self.shards.iter().position(|s| !s.is_alive()) {
                return dead;
            }
        }
    }

    /// Test builds: makes shard `shard` panic in a chosen place.
    #[cfg(feature = "fault-injection")]
    pub fn inject_fault(&self, shard: usize, fault: crate::shard::Fault) -> bool {
        self.shards
            .get(shard)
            .is_some_and(|s| s.send(Command::Fault(fault)))
    }

    /// Stops HTTP, ends every session and joins the shard threads.
    pub async fn shutdown(mut self) {
        self.stop();
        if let Some(task) = self.http_task.take() {
            let _ = task.await;
        }
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop_http.take() {
            let _ = stop.send(());
        }
        for shard in &self.shards {
            shard.send(Command::Shutdown);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}
