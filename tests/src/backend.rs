//! Fresh databases for the coordinator under test.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::Connection;

/// A coordinator storage backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An SQLite file in a temporary directory.
    Sqlite,
    /// A new database on the server named by `DTX_TEST_POSTGRES_URL`.
    Postgres,
    /// A new database on the server named by `DTX_TEST_MYSQL_URL` (MySQL 8 / MariaDB 10.6+).
    Mysql,
}

/// A database made for one test. SQLite files are deleted on drop; PostgreSQL databases
/// are dropped by a later run (see [`Backend::fresh`]).
#[derive(Debug)]
pub struct Database {
    /// URL to give the coordinator.
    pub url: String,
    dir: Option<PathBuf>,
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Database {
    /// The coordinator's attempt history of `gid`, oldest first: `(branch_id, op, outcome)`.
    pub async fn attempts(&self, gid: &str) -> Vec<(String, String, String)> {
        self.rows_of(
            "SELECT branch_id, op, outcome FROM dtx_attempt WHERE gid = $1 ORDER BY id",
            gid,
        )
        .await
    }

    /// The branch rows of `gid` as stored: `(branch_id, op, status, attempts)`.
    pub async fn branch_rows(&self, gid: &str) -> Vec<(String, String, String, i64)> {
        self.rows_of(
            "SELECT branch_id, op, status, attempts FROM dtx_branch WHERE gid = $1 ORDER BY branch_id, op",
            gid,
        )
        .await
    }

    /// Rows of a query over one gid (`$1`), on whichever database this is.
    async fn rows_of<T>(&self, sql: &'static str, gid: &str) -> Vec<T>
    where
        T: Send
            + Unpin
            + for<'r> sqlx::FromRow<'r, sqlx::mysql::MySqlRow>
            + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
            + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>,
    {
        if self.url.starts_with("mysql:") {
            let mut c = sqlx::MySqlConnection::connect(&self.url)
                .await
                .expect("connect MySQL");
            return sqlx::query_as(sqlx::AssertSqlSafe(sql.replace("$1", "?")))
                .bind(gid)
                .fetch_all(&mut c)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        if self.dir.is_some() {
            let mut c = sqlx::SqliteConnection::connect(&self.url)
                .await
                .expect("open SQLite");
            sqlx::query_as(sql)
                .bind(gid)
                .fetch_all(&mut c)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
        } else {
            let mut c = sqlx::PgConnection::connect(&self.url)
                .await
                .expect("connect PostgreSQL");
            sqlx::query_as(sql)
                .bind(gid)
                .fetch_all(&mut c)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
        }
    }
}

/// `DTX_TEST_MYSQL_URL`, or a panic that says how to provide it.
pub fn mysql_url() -> String {
    std::env::var("DTX_TEST_MYSQL_URL").unwrap_or_else(|_| {
        panic!(
            "DTX_TEST_MYSQL_URL is not set. Run the suite with ./scripts/test (it starts \
             MariaDB and sets it), or export DTX_TEST_MYSQL_URL=mysql://USER@HOST:3306/DB \
             pointing at a MySQL 8 / MariaDB 10.6+ server where USER may CREATE DATABASE."
        )
    })
}

/// A fresh participant database for the barrier: a pool on a new PostgreSQL database.
pub async fn fresh_pg_pool() -> (sqlx::PgPool, Database) {
    let db = Backend::Postgres.fresh().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(16)
        .connect(&db.url)
        .await
        .expect("connect PostgreSQL");
    (pool, db)
}

/// A fresh participant database for the barrier: a pool on a new MySQL/MariaDB database.
pub async fn fresh_mysql_pool() -> (sqlx::MySqlPool, Database) {
    let admin_url = mysql_url();
    let mut admin = sqlx::MySqlConnection::connect(&admin_url).await.unwrap_or_else(|e| {
        panic!("cannot connect to DTX_TEST_MYSQL_URL={admin_url}: {e}. Is MariaDB running? ./scripts/test starts it.")
    });
    let name = unique("dtx_p");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("CREATE DATABASE");
    let base = admin_url
        .rsplit_once('/')
        .map_or(admin_url.as_str(), |(b, _)| b);
    let url = format!("{base}/{name}");
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(16)
        .connect(&url)
        .await
        .expect("connect MySQL");
    (pool, Database { url, dir: None })
}

/// A fresh participant database for the barrier: a pool on a new SQLite file (WAL).
pub async fn fresh_sqlite_pool() -> (sqlx::SqlitePool, Database) {
    use std::str::FromStr;
    let db = Backend::Sqlite.fresh().await;
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(&db.url)
        .expect("SQLite URL")
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .busy_timeout(std::time::Duration::from_secs(30));
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .expect("open SQLite");
    (pool, db)
}

/// `DTX_TEST_POSTGRES_URL`, or a panic that says how to provide it.
pub fn postgres_url() -> String {
    std::env::var("DTX_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!(
            "DTX_TEST_POSTGRES_URL is not set. Run the suite with ./scripts/test (it starts \
             PostgreSQL and sets it), or export DTX_TEST_POSTGRES_URL=postgres://USER@HOST:5432/postgres \
             pointing at a server where USER may CREATE DATABASE."
        )
    })
}

fn unique(prefix: &str) -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{prefix}_{secs}_{:08x}", fastrand_u32())
}

fn fastrand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() as u32
}

impl Backend {
    /// Every backend, for parametrised scenarios.
    pub const ALL: [Backend; 3] = [Backend::Sqlite, Backend::Postgres, Backend::Mysql];

    /// A new, empty database.
    pub async fn fresh(self) -> Database {
        match self {
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(unique("dtx-test"));
                std::fs::create_dir_all(&dir).expect("create a temporary directory");
                Database {
                    url: format!("sqlite://{}", dir.join("dtx.db").display()),
                    dir: Some(dir),
                }
            }
            Backend::Postgres => {
                let admin_url = postgres_url();
                let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
                    panic!("cannot connect to DTX_TEST_POSTGRES_URL={admin_url}: {e}. Is PostgreSQL running? ./scripts/test starts it.")
                });
                drop_stale_databases(&mut admin).await;
                let name = unique("dtx_t");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut admin)
                    .await
                    .expect("CREATE DATABASE");
                let base = admin_url
                    .rsplit_once('/')
                    .map_or(admin_url.as_str(), |(b, _)| b);
                Database {
                    url: format!("{base}/{name}"),
                    dir: None,
                }
            }
            Backend::Mysql => {
                let (pool, db) = fresh_mysql_pool().await;
                pool.close().await;
                db
            }
        }
    }
}

/// Drops test databases made more than an hour ago (their tests are long over).
async fn drop_stale_databases(admin: &mut sqlx::PgConnection) {
    let Ok(names) = sqlx::query_scalar::<_, String>(
        "SELECT datname FROM pg_database WHERE datname LIKE 'dtx\\_t\\_%'",
    )
    .fetch_all(&mut *admin)
    .await
    else {
        return;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for name in names {
        let made: u64 = name
            .split('_')
            .nth(2)
            .and_then(|s| s.parse().ok())
            .unwrap_or(now);
        if now.saturating_sub(made) > 3600 {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut *admin)
            .await;
        }
    }
}
