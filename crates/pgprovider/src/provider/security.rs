//! The provider's security surface: the SQL firewall, role-based access and its grant
//! check, and secret rotation (each a layer of its own module; here they are wired in).

use super::route::Target;
use super::{Provider, ProviderBuilder};
use crate::access::AccessPolicy;
use crate::firewall::{Firewall, FirewallOptions};
use crate::secrets::{Rotation, RotationOptions, SecretSource};
use crate::{Driver, Result};
use std::sync::Arc;
use std::time::Duration;

impl<D: Driver + Clone> ProviderBuilder<D> {
    /// Puts a [SQL firewall](crate::firewall) on every statement of the provider (and of
    /// its tenants), for the configuration's `application_name` unless the options name
    /// the application.
    ///
    /// # Errors
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when the allowlist file exists but
    /// cannot be read.
    pub fn firewall(mut self, options: FirewallOptions) -> Result<Self> {
        let app = self.config.application_name().unwrap_or("").to_owned();
        self.extras.firewall = Some(Arc::new(Firewall::new(options, &app)?));
        Ok(self)
    }

    /// Checks every statement against [role-based access](crate::access); handles from
    /// [`Provider::as_role`] (or [`access::with_role`](crate::access::with_role)) say which
    /// role is acting.
    pub fn access(mut self, policy: AccessPolicy) -> Self {
        self.extras.access = Some(Arc::new(policy));
        self
    }

    /// Takes the password from `source`, re-read as `options` say (see
    /// [`secrets`](crate::secrets)), instead of the configuration's.
    pub fn secret(mut self, source: impl SecretSource, options: RotationOptions) -> Self {
        self.extras.rotation = Some(Arc::new(Rotation::new(source, options)));
        self
    }
}

impl<D: Driver> Provider<D> {
    /// The SQL firewall, when one was asked for ([`ProviderBuilder::firewall`]).
    pub fn firewall(&self) -> Option<&Firewall> {
        self.inner.firewall.as_deref()
    }

    /// The role-based access policy, when one was given ([`ProviderBuilder::access`]).
    pub fn access(&self) -> Option<&AccessPolicy> {
        self.inner.access.as_deref()
    }

    /// The rotating secret, when one was given ([`ProviderBuilder::secret`]).
    pub fn rotation(&self) -> Option<&Rotation> {
        self.inner.rotation.as_deref()
    }

    /// Reads the rotating secret's source now (as on a signal); when the secret changed,
    /// new connections use it and open ones are recycled within the rotation's window.
    /// Returns whether it changed.
    ///
    /// # Errors
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) without a rotating secret; the
    /// source's error (the current secret stays).
    pub async fn rotate_secret(&self) -> Result<bool> {
        let Some(r) = &self.inner.rotation else {
            return Err(crate::Error::new(
                crate::ErrorKind::Config,
                "the provider has no rotating secret",
            )
            .with_hint("give one with ProviderBuilder::secret"));
        };
        // The provider's rotation task recycles the pools on the change.
        r.refresh().await
    }

    /// Replaces every pool's connections within `window`, gradually (see
    /// [`Pool::recycle_within`](crate::Pool::recycle_within)), as a secret rotation does.
    pub fn recycle_within(&self, window: Duration) {
        for pool in &self.inner.pools {
            pool.recycle_within(window);
        }
    }

    /// Verifies that the server grants what every role of the [access
    /// policy](ProviderBuilder::access) needs (`has_table_privilege` and friends, the
    /// membership of mapped server roles), on the primary, and reports every gap at once.
    ///
    /// # Errors
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) without an access policy; routing
    /// and server errors. Gaps are not errors: see [`GrantReport::into_result`](crate::access::GrantReport::into_result).
    pub async fn check_grants(&self) -> Result<crate::access::GrantReport> {
        let Some(policy) = self.inner.access.clone() else {
            return Err(crate::Error::new(
                crate::ErrorKind::Config,
                "the provider has no access policy to check",
            )
            .with_hint("give one with ProviderBuilder::access"));
        };
        let mut conn = self.checkout(Target::Primary).await?;
        pgprovider_core::observe::internal(crate::access::check_grants(&mut *conn, &policy)).await
    }
}
