//! The driver conformance suite, run against the diesel-async driver.

pgprovider_testkit::conformance_tests!(
    pgprovider_diesel::DieselDriver::new(),
    pgprovider_testkit::conformance::Capabilities::ALL
        .without_notify()
        .without_recover()
);
