//! The driver conformance suite, run against the tokio-postgres driver.

pgprovider_testkit::conformance_tests!(
    pgprovider_tokio_postgres::TokioPostgres::new(),
    pgprovider_testkit::conformance::Capabilities::ALL
);
