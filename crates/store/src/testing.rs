//! Test support: a fresh store per test on each backend.
//!
//! SQLite gets a file in the temp dir. PostgreSQL gets a new database in the
//! cluster named by `SYNCFLOW_TEST_DATABASE_URL` (the test script starts one); when
//! that is unset the PostgreSQL variant of a test is skipped with a notice, unless
//! `SYNCFLOW_REQUIRE_POSTGRES=1`, in which case it fails.

use std::path::PathBuf;

use crate::Store;

/// A store plus whatever must outlive it (the SQLite file).
pub struct TestStore {
    pub store: Store,
    pub url: String,
    file: Option<PathBuf>,
}

impl Drop for TestStore {
    fn drop(&mut self) {
        if let Some(f) = &self.file {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", f.display()));
            }
        }
    }
}

fn unique_name() -> String {
    syncflow_core::id::new_id("t").replace('_', "")
}

/// Says on the real stderr — not the captured output libtest hides for passing
/// tests — that a test did not run, so a plain `cargo test` without the services
/// cannot pass silently. (`scripts/test` sets `SYNCFLOW_REQUIRE_*=1`, which turns
/// a skip into a failure.)
pub fn skipped(what: &str, why: &str) {
    use std::io::Write;
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    let _ = writeln!(std::io::stderr(), "\n*** SKIPPED {what} of {test}: {why} ***");
}

pub async fn sqlite() -> TestStore {
    let file = std::env::temp_dir().join(format!("syncflow-test-{}.db", unique_name()));
    let url = format!("sqlite:{}", file.display());
    let store = Store::open(&url).await.expect("open sqlite test store");
    TestStore { store, url, file: Some(file) }
}

/// URL of a fresh, empty PostgreSQL database, or `None` when no test cluster is
/// configured (see the module docs).
pub async fn postgres_url() -> Option<String> {
    let Ok(base) = std::env::var("SYNCFLOW_TEST_DATABASE_URL") else {
        if std::env::var("SYNCFLOW_REQUIRE_POSTGRES").as_deref() == Ok("1") {
            panic!("SYNCFLOW_REQUIRE_POSTGRES=1 but SYNCFLOW_TEST_DATABASE_URL is not set");
        }
        skipped("PostgreSQL variant", "SYNCFLOW_TEST_DATABASE_URL is not set (scripts/test starts a cluster)");
        return None;
    };
    let name = format!("sf_{}", unique_name());
    let admin = sqlx::PgPool::connect(&base).await.expect("connect to test cluster");
    let _ = sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await.expect("create test database");
    admin.close().await;
    let (prefix, _) = base.rsplit_once('/').expect("database url has a path");
    Some(format!("{prefix}/{name}"))
}

pub async fn postgres() -> Option<TestStore> {
    let url = postgres_url().await?;
    let store = Store::open(&url).await.expect("open postgres test store");
    Some(TestStore { store, url, file: None })
}

/// Declares `mod sqlite` and `mod postgres`, each with one `#[tokio::test]` per
/// listed async fn taking a `TestStore`, so every store test runs on both backends
/// and a failure names the backend.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::testing::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(store) = $crate::testing::postgres().await {
                        super::$name(store).await;
                    }
                }
            )*
        }
    };
}
