//! The PostgreSQL side of the tests. `FLYWHEEL_TEST_DATABASE_URL` names a
//! database the tests may create schemas in (`scripts/test.sh` starts a
//! throw-away cluster and sets it); with `FLYWHEEL_TEST_STORE=postgres`,
//! every app `spawn_app` starts uses PostgreSQL instead of sled, in a
//! schema of its own.

use std::time::Duration;

/// The variable the test config names in `store.url_env`.
pub const URL_ENV: &str = "FLYWHEEL_TEST_STORE_URL";

/// What a test app needs to use a schema of its own.
pub struct TestDatabase {
    /// The `[store]` section.
    pub toml: String,
    /// The URL, its search path set to the schema.
    pub url: String,
}

impl TestDatabase {
    /// The store at `url`.
    pub fn at(url: &str) -> Self {
        Self {
            toml: format!(
                "\n[store]\nkind = \"postgres\"\nurl_env = \"{URL_ENV}\"\npool_size = 8\nstatement_timeout_ms = 5000\n"
            ),
            url: url.to_string(),
        }
    }
}

/// The test database's URL, when the tests have one.
pub fn database_url() -> Option<String> {
    std::env::var("FLYWHEEL_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

/// True when `spawn_app` runs against PostgreSQL.
pub fn selected() -> bool {
    std::env::var("FLYWHEEL_TEST_STORE").is_ok_and(|s| s == "postgres")
}

/// The schema of `data_dir`'s app when the tests run against PostgreSQL.
pub async fn store_for(data_dir: &std::path::Path) -> Option<TestDatabase> {
    if !selected() {
        return None;
    }
    let Some(base) = database_url() else {
        panic!("FLYWHEEL_TEST_STORE=postgres needs FLYWHEEL_TEST_DATABASE_URL");
    };
    let digest = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(
        data_dir.display().to_string().as_bytes(),
    ));
    let schema = format!("t_{}", hex::encode(&digest[..12]));
    Some(database_in(&base, &schema).await)
}

/// A fresh schema named `prefix` and a ULID, on the test database or, when
/// the tests have none, on a cluster of the caller's own (kept alive by
/// holding the returned `Cluster`).
pub async fn fresh_schema(prefix: &str) -> (TestDatabase, Option<Cluster>) {
    let (base, cluster) = match database_url() {
        Some(url) => (url, None),
        None => {
            let cluster = Cluster::start();
            (cluster.url(), Some(cluster))
        }
    };
    let schema = format!("{prefix}_{}", ulid::Ulid::new().to_string().to_lowercase());
    (database_in(&base, &schema).await, cluster)
}

/// A fresh schema (kept if it exists) and the URL that uses it.
pub async fn database_in(base: &str, schema: &str) -> TestDatabase {
    let (client, connection) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_postgres::connect(base, tokio_postgres::NoTls),
    )
    .await
    .expect("the test database answers within 10 s")
    .expect("the test database accepts a connection");
    let driver = tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .await
        .unwrap();
    drop(client);
    let _ = driver.await;
    let join = if base.contains('?') { '&' } else { '?' };
    TestDatabase::at(&format!("{base}{join}options=-c%20search_path%3D{schema}"))
}

/// A cluster of its own for a test that stops and starts its database:
/// `initdb` in a temporary directory, `pg_ctl` on a free port (as the
/// `postgres` user when the tests run as root), stopped on drop.
pub struct Cluster {
    bin: std::path::PathBuf,
    dir: tempfile::TempDir,
    pub port: u16,
    user: String,
    /// Serves TLS with a certificate for 127.0.0.1 signed by `ca()`.
    tls: bool,
}

fn run_as_owner(owner: Option<&str>, program: &std::path::Path, args: &[&str]) -> bool {
    let mut command = match owner {
        Some(user) => {
            let mut line = program.display().to_string();
            for a in args {
                line.push_str(&format!(" '{a}'"));
            }
            let mut c = std::process::Command::new("su");
            c.args([user, "-s", "/bin/sh", "-c", &line]);
            c
        }
        None => {
            let mut c = std::process::Command::new(program);
            c.args(args);
            c
        }
    };
    command
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The newest `/usr/lib/postgresql/<major>/bin`.
fn debian_bin() -> Option<std::path::PathBuf> {
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let major: u32 = e.file_name().to_str()?.parse().ok()?;
            Some((major, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").exists())
        .max_by_key(|(major, _)| *major)
        .map(|(_, bin)| bin)
}

fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"))
}

impl Cluster {
    /// Starts a cluster with PostgreSQL's binaries from
    /// `FLYWHEEL_TEST_PG_BIN` (set by `scripts/test.sh`), else Debian's
    /// newest under `/usr/lib/postgresql`.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// A cluster that also serves TLS, with a server certificate for
    /// 127.0.0.1 signed by a CA of its own (`ca()`), made by `openssl`.
    pub fn start_tls() -> Self {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Self {
        let bin = std::env::var("FLYWHEEL_TEST_PG_BIN")
            .map(std::path::PathBuf::from)
            .ok()
            .or_else(debian_bin)
            .expect("PostgreSQL is installed (Debian: apt-get install postgresql)");
        let dir = tempfile::tempdir().unwrap();
        let root = running_as_root();
        let user = if root { "postgres" } else { "flywheel" }.to_string();
        if root {
            std::process::Command::new("chown")
                .args(["-R", "postgres", &dir.path().display().to_string()])
                .status()
                .unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let data = dir.path().join("data").display().to_string();
        assert!(
            run_as_owner(
                root.then_some("postgres"),
                &bin.join("initdb"),
                &["-D", &data, "-U", &user, "--auth=trust", "-E", "UTF8"],
            ),
            "initdb works"
        );
        let cluster = Self {
            bin,
            dir,
            port,
            user,
            tls,
        };
        if tls {
            cluster.make_certificates();
        }
        cluster.up();
        cluster
    }

    fn owner(&self) -> Option<&str> {
        running_as_root().then_some("postgres")
    }

    pub fn url(&self) -> String {
        format!("postgres://{}@127.0.0.1:{}/postgres", self.user, self.port)
    }

    /// A URL over the cluster's Unix socket, which never uses TLS.
    pub fn socket_url(&self) -> String {
        format!(
            "postgres://{}@localhost/postgres?host={}&port={}",
            self.user,
            self.dir.path().display(),
            self.port
        )
    }

    /// The certificate of the CA that signed the server's (`start_tls`).
    pub fn ca(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn make_certificates(&self) {
        let dir = self.dir.path();
        let openssl = |args: &[&str]| {
            let status = std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .stderr(std::process::Stdio::null())
                .status()
                .expect("openssl runs (Debian: apt-get install openssl)");
            assert!(status.success(), "openssl {args:?}");
        };
        let key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"],
                &key[..],
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=flywheel test CA",
                ],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req"],
                &key[..],
                &[
                    "-keyout",
                    "server.key",
                    "-out",
                    "server.csr",
                    "-subj",
                    "/CN=127.0.0.1",
                ],
            ]
            .concat(),
        );
        std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ]);
        // The server refuses a key others may read; it runs as the owner.
        let key = dir.join("server.key");
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        if let Some(owner) = self.owner() {
            for file in ["server.key", "server.pem"] {
                std::process::Command::new("chown")
                    .args([owner, &dir.join(file).display().to_string()])
                    .status()
                    .unwrap();
            }
        }
    }

    /// Starts the server and waits until it accepts connections.
    pub fn up(&self) {
        let data = self.dir.path().join("data").display().to_string();
        let log = self.dir.path().join("log").display().to_string();
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        if self.tls {
            let dir = self.dir.path().display();
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={dir}/server.pem -c ssl_key_file={dir}/server.key"
            ));
        }
        assert!(
            run_as_owner(
                self.owner(),
                &self.bin.join("pg_ctl"),
                &["-D", &data, "-l", &log, "-w", "-o", &options, "start"],
            ),
            "pg_ctl start works"
        );
    }

    /// Stops the server at once (connections are cut).
    pub fn down(&self) {
        let data = self.dir.path().join("data").display().to_string();
        run_as_owner(
            self.owner(),
            &self.bin.join("pg_ctl"),
            &["-D", &data, "-m", "immediate", "-w", "stop"],
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.down();
    }
}
