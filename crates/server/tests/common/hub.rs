//! A whole hub for end-to-end tests: the engine with the given `[[systems]]` blocks
//! and the router on a loopback socket, over a test store. `stop` ends both.

use std::sync::Arc;

use syncflow_engine::{Engine, SystemConfig};
use syncflow_server::{router, ApiTokens, AppState};
use syncflow_store::Store;
use tokio::sync::watch;

/// Evaluates `$probe` (an `Option`) until it is `Some`, for 30 s at most.
#[macro_export]
macro_rules! eventually {
    ($what:expr, $probe:expr) => {{
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Some(v) = $probe {
                break v;
            }
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {}", $what);
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }};
}

pub struct RunningHub {
    pub url: String,
    pub engine: Arc<Engine>,
    stop: watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
}

impl RunningHub {
    pub async fn start(store: &Store, systems_toml: &str) -> RunningHub {
        #[derive(serde::Deserialize)]
        struct File {
            systems: Vec<toml::Table>,
        }
        let file: File = toml::from_str(systems_toml).unwrap();
        let configs: Vec<SystemConfig> =
            file.systems.into_iter().map(|t| SystemConfig::from_table(t).unwrap()).collect();
        let engine = Arc::new(Engine::new(store.clone(), configs.clone()).unwrap());
        let (stop, rx) = watch::channel(false);
        let mut tasks = engine.spawn(rx.clone());
        let app = router(
            AppState::new(store.clone(), ApiTokens::default()).with_systems(configs).with_pipelines(engine.pipelines()),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let mut until = rx;
        tasks.spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = until.wait_for(|s| *s).await;
                })
                .await;
        });
        RunningHub { url, engine, stop, tasks }
    }

    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}
