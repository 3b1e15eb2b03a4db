//! The driver conformance suite, run against the sqlx driver.

pgprovider_testkit::conformance_tests!(
    pgprovider_sqlx::SqlxDriver::new(),
    pgprovider_testkit::conformance::Capabilities::ALL.without_notify()
);
