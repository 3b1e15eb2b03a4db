//! TLS for every sslmode against a real server with generated certificates.

use pgprovider::{Config, Connection, Driver, ErrorKind, SqlState};
use pgprovider_testkit::TestCluster;
use pgprovider_tokio_postgres::TokioPostgres;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use std::path::{Path, PathBuf};
use std::time::Duration;

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(p, key),
    }
}

/// A certificate for `names` (DNS names or IP addresses) and its key, both PEM.
fn leaf(ca: &Ca, common_name: &str, names: &[&str]) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, common_name);
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p: PathBuf = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// Connects once with `url` and says whether the session is encrypted, and as whom.
async fn session(url: &str) -> Result<(bool, String), pgprovider::Error> {
    let c = Config::from_url(url).unwrap();
    let params = c.connect_params(&c.nodes()[0]).await?;
    let mut conn = TokioPostgres::new().connect(&params).await?;
    let rows = conn
        .simple_query("SELECT ssl, current_user FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .await?;
    Ok((
        rows[0].get(0) == Some("t"),
        rows[0].get(1).unwrap().to_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sslmode_against_a_tls_server() {
    let trusted = ca("pgprovider test ca");
    let other = ca("some other ca");
    let (cert, key) = leaf(&trusted, "db", &["db.internal", "127.0.0.1"]);
    let cluster = TestCluster::builder()
        .tls(cert, key)
        .tls_client_ca(trusted.pem.clone())
        .hba("hostssl all certuser 127.0.0.1/32 cert")
        .hba("hostnossl all tlsonly 127.0.0.1/32 reject")
        .start()
        .await
        .unwrap();
    let p = cluster.primary();
    p.execute("CREATE ROLE certuser LOGIN; CREATE ROLE tlsonly LOGIN")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = write(dir.path(), "root.crt", &trusted.pem);
    let wrong_root = write(dir.path(), "other.crt", &other.pem);
    let (ccert, ckey) = leaf(&trusted, "certuser", &["certuser"]);
    let (ccert, ckey) = (
        write(dir.path(), "client.crt", &ccert),
        write(dir.path(), "client.key", &ckey),
    );
    let port = p.port();
    let at =
        |host: &str, user: &str, q: &str| format!("postgres://{user}@{host}:{port}/postgres?{q}");

    // Modes that encrypt, and those that need not.
    for (query, encrypted) in [
        ("sslmode=disable".to_owned(), false),
        ("sslmode=allow".to_owned(), false),
        ("sslmode=prefer".to_owned(), true),
        ("sslmode=require".to_owned(), true),
        (format!("sslmode=require&sslrootcert={root}"), true),
        (format!("sslmode=verify-ca&sslrootcert={root}"), true),
        (format!("sslmode=verify-full&sslrootcert={root}"), true),
    ] {
        let (ssl, _) = session(&at("127.0.0.1", "postgres", &query))
            .await
            .unwrap_or_else(|e| panic!("{query}: {e}"));
        assert_eq!(ssl, encrypted, "{query}");
    }

    // verify-ca checks the chain but not the name; verify-full checks both.
    let (ssl, _) = session(&at(
        "localhost",
        "postgres",
        &format!("sslmode=verify-ca&sslrootcert={root}"),
    ))
    .await
    .unwrap();
    assert!(ssl);
    let e = session(&at(
        "localhost",
        "postgres",
        &format!("sslmode=verify-full&sslrootcert={root}"),
    ))
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Tls, "{e}");
    assert!(
        e.to_string().to_lowercase().contains("not valid for name"),
        "{e}"
    );
    for mode in ["require", "verify-ca", "verify-full"] {
        let e = session(&at(
            "127.0.0.1",
            "postgres",
            &format!("sslmode={mode}&sslrootcert={wrong_root}"),
        ))
        .await
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Tls, "{mode}: {e}");
        assert!(e.to_string().contains("UnknownIssuer"), "{mode}: {e}");
        assert!(e.hint().unwrap().contains("sslrootcert"), "{mode}");
    }

    // A user the server takes only over TLS: no silent plaintext, and allow upgrades.
    let e = session(&at("127.0.0.1", "tlsonly", "sslmode=disable"))
        .await
        .unwrap_err();
    assert_eq!(
        e.sql_state(),
        Some(SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
        "{e}"
    );
    let (ssl, user) = session(&at("127.0.0.1", "tlsonly", "sslmode=allow"))
        .await
        .unwrap();
    assert!(ssl && user == "tlsonly");

    // Client-certificate authentication.
    let (ssl, user) = session(&at(
        "127.0.0.1",
        "certuser",
        &format!("sslmode=verify-full&sslrootcert={root}&sslcert={ccert}&sslkey={ckey}"),
    ))
    .await
    .unwrap();
    assert!(ssl && user == "certuser");
    let e = session(&at(
        "127.0.0.1",
        "certuser",
        &format!("sslmode=verify-full&sslrootcert={root}"),
    ))
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth, "without its certificate: {e}");

    // Unix sockets never use TLS, whatever the mode (libpq's rule).
    let sock = cluster.dir().join("primary/sock");
    let (ssl, _) = session(&format!(
        "postgres://postgres@{}:{port}/postgres?sslmode=require",
        urlencode(&sock)
    ))
    .await
    .unwrap();
    assert!(!ssl);

    // Cancel requests travel over TLS too.
    let c = Config::from_url(&at(
        "127.0.0.1",
        "postgres",
        &format!("sslmode=verify-full&sslrootcert={root}"),
    ))
    .unwrap();
    let mut conn = TokioPostgres::new()
        .connect(&c.connect_params(&c.nodes()[0]).await.unwrap())
        .await
        .unwrap();
    let token = conn.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        token.cancel().await
    });
    let e = conn.simple_query("SELECT pg_sleep(30)").await.unwrap_err();
    assert_eq!(e.sql_state(), Some(SqlState::QUERY_CANCELED));
    canceller.await.unwrap().unwrap();
}

fn urlencode(p: &Path) -> String {
    p.display().to_string().replace('/', "%2F")
}

#[tokio::test]
async fn modes_that_need_tls_never_fall_back_to_plaintext() {
    let url = pgprovider_testkit::shared_url().await.unwrap();
    // The shared server may or may not offer TLS; a throwaway one certainly does not.
    let cluster = TestCluster::start().await.unwrap();
    let plain = cluster.primary().url();
    for mode in [
        "require",
        "verify-ca&sslrootcert=system",
        "verify-full&sslrootcert=system",
    ] {
        let e = session(&format!("{plain}?sslmode={mode}"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Tls, "{mode}: {e}");
        assert!(
            e.to_string().contains("server does not support TLS"),
            "{mode}: {e}"
        );
        assert!(e.hint().unwrap().contains("turn ssl on"), "{mode}");
    }
    let (ssl, _) = session(&format!("{plain}?sslmode=prefer")).await.unwrap();
    assert!(
        !ssl,
        "prefer falls back to plaintext when the server has no TLS"
    );
    let sep = if url.contains('?') { '&' } else { '?' };
    session(&format!("{url}{sep}sslmode=prefer")).await.unwrap();
}

#[tokio::test]
async fn unreadable_certificates_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write(dir.path(), "empty.pem", "");
    let junk = write(dir.path(), "junk.pem", "not a pem file");
    for (query, expect) in [
        (
            format!("sslmode=verify-full&sslrootcert={empty}"),
            "sslrootcert",
        ),
        (
            format!("sslmode=require&sslcert={junk}&sslkey={junk}"),
            "sslcert",
        ),
    ] {
        let e = session(&format!("postgres://u@127.0.0.1:1/db?{query}"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Tls, "{query}");
        let text = e.to_string();
        assert!(
            text.contains(expect)
                && (text.contains("holds no certificate") || text.contains("cannot read")),
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_servers_bad_keys_bad_roots_and_system_roots() {
    let trusted = ca("pgprovider test ca");
    let (cert, key) = leaf(&trusted, "db", &["127.0.0.1"]);
    let cluster = TestCluster::builder()
        .tls(cert, key)
        .setting("ssl_max_protocol_version", "TLSv1.2")
        .start()
        .await
        .unwrap();
    let port = cluster.primary().port();
    let dir = tempfile::tempdir().unwrap();
    let root = write(dir.path(), "root.crt", &trusted.pem);
    let url = |q: &str| format!("postgres://postgres@127.0.0.1:{port}/postgres?{q}");

    // A TLS 1.2-only server, with and without certificate checks.
    for q in [
        "sslmode=require".to_owned(),
        format!("sslmode=verify-full&sslrootcert={root}"),
    ] {
        let (ssl, _) = session(&url(&q))
            .await
            .unwrap_or_else(|e| panic!("{q}: {e}"));
        assert!(ssl, "{q}");
    }
    // The system's roots do not include our test CA.
    let e = session(&url("sslmode=verify-full&sslrootcert=system"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Tls, "{e}");

    // Client key problems are reported before anything is sent.
    let (ccert, _) = leaf(&trusted, "someone", &["someone"]);
    let (_, other_key) = leaf(&trusted, "else", &["else"]);
    let ccert = write(dir.path(), "c.crt", &ccert);
    let other_key = write(dir.path(), "other.key", &other_key);
    let junk = write(dir.path(), "junk.key", "not a key");
    let e = session(&url(&format!(
        "sslmode=require&sslcert={ccert}&sslkey={junk}"
    )))
    .await
    .unwrap_err();
    assert!(e.to_string().contains("cannot read sslkey"), "{e}");
    let e = session(&url(&format!(
        "sslmode=require&sslcert={ccert}&sslkey={other_key}"
    )))
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Tls, "{e}");

    // A root file whose certificate does not parse.
    let bad_root = write(
        dir.path(),
        "bad.crt",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );
    let e = session(&url(&format!("sslmode=verify-ca&sslrootcert={bad_root}")))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("unusable certificate"), "{e}");

    // Verify modes without roots, from parameters built by hand (the config refuses this).
    let mut params = pgprovider::ConnectParams::new(
        pgprovider::Host::Tcp("127.0.0.1".into()),
        port,
        "postgres",
        "postgres",
    );
    params.tls.mode = pgprovider::SslMode::VerifyFull;
    let e = TokioPostgres::new().connect(&params).await.unwrap_err();
    assert!(e.to_string().contains("needs sslrootcert"), "{e}");
}
