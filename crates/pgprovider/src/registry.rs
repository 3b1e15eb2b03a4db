//! The driver registry: a value mapping driver names to drivers, passed to whatever builds
//! pools, so tests can build their own. No process-wide state.
//!
//! Drivers are generic inside ([`Pool<D>`](crate::Pool)) and erased at the edges: the
//! registry holds [`AnyDriver`]s, which implement [`Driver`] themselves, so a
//! `Provider<AnyDriver>` or `Pool<AnyDriver>` works with whichever driver a name selects,
//! with typed statements on driver-neutral values ([`Value`] parameters, [`ValueRow`]
//! results) and transactions:
//!
//! ```no_run
//! # async fn run() -> pgprovider::Result<()> {
//! use pgprovider::{DriverRegistry, Value};
//! let mut registry = DriverRegistry::new();
//! registry.register(pgprovider_tokio_postgres::TokioPostgres::new());
//! let config = pgprovider::Config::from_url("postgres://app@db1,db2/app")?;
//! let provider = registry.provider("tokio-postgres", &config, Default::default())?;
//! provider.execute("INSERT INTO users (id, name) VALUES ($1, $2)", &[&Value::from(1_i64), &Value::from("ada")]).await?;
//! let (id, name): (i64, String) = provider.query_one("SELECT id, name FROM users", &[]).await?.to()?;
//! # Ok(()) }
//! ```

use pgprovider_core::{
    CancelToken, ConnectParams, Connection, Driver, Error, ErrorKind, Queries, Result, SimpleRow,
    Value, ValueQueries, ValueRow,
};
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

trait DynDriver: Send + Sync {
    fn name(&self) -> &'static str;
    fn connect<'a>(&'a self, params: &'a ConnectParams) -> BoxFuture<'a, Result<AnyConnection>>;
}

impl<D: Driver> DynDriver for D
where
    D::Connection: ValueQueries + Queries,
{
    fn name(&self) -> &'static str {
        Driver::name(self)
    }
    fn connect<'a>(&'a self, params: &'a ConnectParams) -> BoxFuture<'a, Result<AnyConnection>> {
        Box::pin(async move {
            let c = Driver::connect(self, params).await?;
            Ok(AnyConnection(Box::new(c)))
        })
    }
}

trait DynConnection: Send {
    fn is_broken(&self) -> bool;
    fn interrupted(&self) -> bool;
    fn release_in_place(&mut self) -> bool;
    fn recover(&mut self) -> BoxFuture<'_, Result<()>>;
    fn needs_reset(&self) -> bool;
    fn recycled(&mut self);
    fn refused_read_only(&self) -> bool;
    fn ping(&mut self) -> BoxFuture<'_, Result<()>>;
    fn reset(&mut self) -> BoxFuture<'_, Result<()>>;
    fn simple_query<'a>(&'a mut self, sql: &'a str) -> BoxFuture<'a, Result<Vec<SimpleRow>>>;
    fn cancel_token(&self) -> CancelToken;
    fn close(self: Box<Self>) -> BoxFuture<'static, ()>;
    fn query_values<'a>(
        &'a mut self,
        sql: &'a str,
        params: &'a [Value],
    ) -> BoxFuture<'a, Result<Vec<ValueRow>>>;
    fn execute_values<'a>(
        &'a mut self,
        sql: &'a str,
        params: &'a [Value],
    ) -> BoxFuture<'a, Result<u64>>;
    fn query_timeout(&self) -> Option<Duration>;
    fn set_query_timeout(&mut self, timeout: Option<Duration>);
    fn in_transaction(&self) -> bool;
}

impl<C: ValueQueries + Queries> DynConnection for C {
    fn query_values<'a>(
        &'a mut self,
        sql: &'a str,
        params: &'a [Value],
    ) -> BoxFuture<'a, Result<Vec<ValueRow>>> {
        Box::pin(ValueQueries::query_values(self, sql, params))
    }
    fn execute_values<'a>(
        &'a mut self,
        sql: &'a str,
        params: &'a [Value],
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(ValueQueries::execute_values(self, sql, params))
    }
    fn query_timeout(&self) -> Option<Duration> {
        Queries::query_timeout(self)
    }
    fn set_query_timeout(&mut self, timeout: Option<Duration>) {
        Queries::set_query_timeout(self, timeout)
    }
    fn in_transaction(&self) -> bool {
        Queries::in_transaction(self)
    }
    fn is_broken(&self) -> bool {
        Connection::is_broken(self)
    }
    fn interrupted(&self) -> bool {
        Connection::interrupted(self)
    }
    fn release_in_place(&mut self) -> bool {
        Connection::release_in_place(self)
    }
    fn recover(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(Connection::recover(self))
    }
    fn needs_reset(&self) -> bool {
        Connection::needs_reset(self)
    }
    fn recycled(&mut self) {
        Connection::recycled(self)
    }
    fn refused_read_only(&self) -> bool {
        Connection::refused_read_only(self)
    }
    fn ping(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(Connection::ping(self))
    }
    fn reset(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(Connection::reset(self))
    }
    fn simple_query<'a>(&'a mut self, sql: &'a str) -> BoxFuture<'a, Result<Vec<SimpleRow>>> {
        Box::pin(Connection::simple_query(self, sql))
    }
    fn cancel_token(&self) -> CancelToken {
        Connection::cancel_token(self)
    }
    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(Connection::close(*self))
    }
}

/// A driver chosen at run time (from a [`DriverRegistry`]).
#[derive(Clone)]
pub struct AnyDriver(Arc<dyn DynDriver>);

impl AnyDriver {
    /// Erases a concrete driver.
    pub fn new<D: Driver>(driver: D) -> Self
    where
        D::Connection: ValueQueries + Queries,
    {
        AnyDriver(Arc::new(driver))
    }
}

impl fmt::Debug for AnyDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AnyDriver({})", self.0.name())
    }
}

impl Driver for AnyDriver {
    type Connection = AnyConnection;
    fn name(&self) -> &'static str {
        self.0.name()
    }
    async fn connect(&self, params: &ConnectParams) -> Result<AnyConnection> {
        self.0.connect(params).await
    }
}

/// A connection of an [`AnyDriver`].
pub struct AnyConnection(Box<dyn DynConnection>);

impl fmt::Debug for AnyConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AnyConnection")
    }
}

impl Connection for AnyConnection {
    fn is_broken(&self) -> bool {
        self.0.is_broken()
    }
    fn interrupted(&self) -> bool {
        self.0.interrupted()
    }
    fn release_in_place(&mut self) -> bool {
        self.0.release_in_place()
    }
    fn recover(&mut self) -> impl Future<Output = Result<()>> + Send {
        self.0.recover()
    }
    fn needs_reset(&self) -> bool {
        self.0.needs_reset()
    }
    fn recycled(&mut self) {
        self.0.recycled()
    }
    fn refused_read_only(&self) -> bool {
        self.0.refused_read_only()
    }
    fn ping(&mut self) -> impl Future<Output = Result<()>> + Send {
        self.0.ping()
    }
    fn reset(&mut self) -> impl Future<Output = Result<()>> + Send {
        self.0.reset()
    }
    async fn simple_query(&mut self, sql: &str) -> Result<Vec<SimpleRow>> {
        self.0.simple_query(sql).await
    }
    fn cancel_token(&self) -> CancelToken {
        self.0.cancel_token()
    }
    fn close(self) -> impl Future<Output = ()> + Send {
        self.0.close()
    }
}

impl ValueQueries for AnyConnection {
    async fn query_values(&mut self, sql: &str, params: &[Value]) -> Result<Vec<ValueRow>> {
        self.0.query_values(sql, params).await
    }
    async fn execute_values(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        self.0.execute_values(sql, params).await
    }
}

/// Typed statements on driver-neutral values: `&[&Value]` parameters, [`ValueRow`] rows
/// (readable with [`FromRow`](crate::FromRow), tuples and `#[derive(FromRow)]`).
impl Queries for AnyConnection {
    type Row = ValueRow;
    type Param<'a> = Value;
    type Pipeline = pgprovider_core::NoPipeline;

    async fn query(&mut self, sql: &str, params: &[&Value]) -> Result<Vec<ValueRow>> {
        let owned: Vec<Value> = params.iter().map(|v| (*v).clone()).collect();
        self.0.query_values(sql, &owned).await
    }

    async fn execute(&mut self, sql: &str, params: &[&Value]) -> Result<u64> {
        let owned: Vec<Value> = params.iter().map(|v| (*v).clone()).collect();
        self.0.execute_values(sql, &owned).await
    }

    fn query_timeout(&self) -> Option<Duration> {
        self.0.query_timeout()
    }

    fn set_query_timeout(&mut self, timeout: Option<Duration>) {
        self.0.set_query_timeout(timeout)
    }

    fn in_transaction(&self) -> bool {
        self.0.in_transaction()
    }
}

/// Maps driver names to drivers.
///
/// ```
/// use pgprovider::DriverRegistry;
/// let registry = DriverRegistry::new();
/// let err = registry.get("tokio-postgres").unwrap_err();
/// assert!(err.to_string().contains("no driver named"));
/// ```
#[derive(Clone, Default)]
pub struct DriverRegistry {
    drivers: BTreeMap<&'static str, AnyDriver>,
}

impl fmt::Debug for DriverRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.drivers.keys()).finish()
    }
}

impl DriverRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `driver` under its [`Driver::name`], replacing one of the same name.
    pub fn register<D: Driver>(&mut self, driver: D) -> &mut Self
    where
        D::Connection: ValueQueries + Queries,
    {
        let name = Driver::name(&driver);
        self.drivers.insert(name, AnyDriver::new(driver));
        self
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        self.drivers.keys().copied().collect()
    }

    /// A pool of connections to `node` through the driver named `name`.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), pgprovider::Error> {
    /// let mut registry = pgprovider::DriverRegistry::new();
    /// registry.register(pgprovider_tokio_postgres::TokioPostgres::new());
    /// let config = pgprovider::Config::from_url("postgres://app@db1/app")?;
    /// let pool = registry.pool("tokio-postgres", &config, &config.nodes()[0])?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn pool(
        &self,
        name: &str,
        config: &crate::Config,
        node: &crate::config::Node,
    ) -> Result<crate::Pool<AnyDriver>> {
        Ok(crate::Pool::new(self.get(name)?, config, node))
    }

    /// A provider over every node of `config` through the driver named `name`: typed
    /// statements on [`Value`]s, transactions, reads on standbys, tenants (see the
    /// [module docs](self)).
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn provider(
        &self,
        name: &str,
        config: &crate::Config,
        options: crate::provider::TopologyOptions,
    ) -> Result<crate::provider::Provider<AnyDriver>> {
        Ok(crate::provider::Provider::new(
            self.get(name)?,
            config,
            options,
        ))
    }

    /// The driver named `name`.
    ///
    /// # Errors
    /// [`ErrorKind::Config`] naming the registered drivers when there is none by that name.
    pub fn get(&self, name: &str) -> Result<AnyDriver> {
        self.drivers.get(name).cloned().ok_or_else(|| {
            let known = self.names();
            Error::new(ErrorKind::Config, format!("no driver named {name:?}")).with_hint(
                if known.is_empty() {
                    "no driver is registered; register one, such as pgprovider_tokio_postgres::TokioPostgres".to_owned()
                } else {
                    format!("registered drivers: {}", known.join(", "))
                },
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_registry_says_how_to_fill_it() {
        let e = DriverRegistry::new().get("tokio-postgres").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().contains("no driver is registered"), "{e}");
        assert!(DriverRegistry::new().names().is_empty());
    }
}
