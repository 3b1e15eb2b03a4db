//! Hooks around every operation, and the tracing span that follows the OpenTelemetry
//! database conventions.
//!
//! A [`Hooks`] registry travels with the connection parameters to every connection of a
//! pool; drivers run each operation (query, execute, batch, COPY, transaction control,
//! notify) through [`Hooks::observe`], and the pool reports the connection lifecycle
//! (connect, checkout, return, close) through it too. With nothing registered the registry
//! is a `None`: the hot path is one branch, with no allocation and no dynamic dispatch.
//!
//! - **Order**: hooks run by priority (lower first), then in registration order; `after`
//!   hooks run in the same order.
//! - **Rejection**: a `before` hook may return [`Verdict::Reject`] (or an async check that
//!   rejects): the operation does not run, nothing reaches the server, and the caller gets
//!   [`ErrorKind::Rejected`] naming the hook and its reason. Later `before` hooks do not
//!   run; every `after` hook sees the rejection as the outcome's error.
//! - **Async hooks**: [`Verdict::Wait`] hands over a future the operation awaits first.
//! - **Panics** in a hook are caught, logged at `error` level with the hook's name, counted
//!   ([`Hooks::panics`]) and otherwise ignored: the operation goes on, the pool is not
//!   poisoned.
//! - **Spans** ([`HooksBuilder::spans`]): one `tracing` span per operation, named
//!   `pgprovider.operation`, with `db.system.name`, `db.namespace`, `db.operation.name`,
//!   `db.query.text` (the statement with its placeholders; parameter values are never
//!   recorded), `server.address`, `server.port`, `db.response.status_code` (the SQLSTATE on
//!   error), `error.type`, `db.response.returned_rows`, `otel.kind = "client"`,
//!   `otel.status_code`, and the correlation id and tenant when set.
//! - **Correlation ids** travel in a task-local ([`with_correlation_id`]) into every span,
//!   hook and audit line of the operations run inside it, and with
//!   [`HooksBuilder::sql_comments`] into the SQL as a trailing sqlcommenter comment.
//!
//! ```
//! use pgprovider_core::observe::{Hook, Hooks, Operation, OperationKind, Verdict};
//! struct NoDrops;
//! impl Hook for NoDrops {
//!     fn name(&self) -> &str { "no-drops" }
//!     fn before(&self, op: &Operation<'_>) -> Verdict {
//!         match op.sql {
//!             Some(sql) if sql.trim_start().to_ascii_uppercase().starts_with("DROP") => {
//!                 Verdict::Reject("DROP is not allowed from the application".into())
//!             }
//!             _ => Verdict::Proceed,
//!         }
//!     }
//! }
//! let hooks = Hooks::builder().hook(0, NoDrops).build();
//! let op = Operation::new(OperationKind::Execute, "db1:5432").with_sql("DROP TABLE t");
//! # tokio_test_block_on(async {
//! let r = hooks.observe(&op, |_: &()| None, async { Ok(()) }).await;
//! assert_eq!(r.unwrap_err().kind(), pgprovider_core::ErrorKind::Rejected);
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     let mut f = std::pin::pin!(f);
//! #     let waker = std::task::Waker::noop();
//! #     let mut cx = std::task::Context::from_waker(&waker);
//! #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
//! # }
//! ```
//!
//! (This file is long by choice: the `Operation`, the hook trait, the registry that runs
//! hooks by priority with contained panics, and the span are one contract drivers and the
//! provider share; about a third of it is tests.)

use crate::{Error, ErrorKind, Result};
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// A boxed future, as an async hook returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What an operation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OperationKind {
    /// A statement returning rows.
    Query,
    /// A statement returning a count.
    Execute,
    /// A pipelined batch of statements.
    Batch,
    /// `COPY … FROM STDIN` or `COPY … TO STDOUT`.
    Copy,
    /// `BEGIN` / `START TRANSACTION`.
    Begin,
    /// `COMMIT`.
    Commit,
    /// `ROLLBACK` (of the whole transaction).
    Rollback,
    /// `NOTIFY` / `pg_notify`.
    Notify,
    /// Opening a connection.
    Connect,
    /// Taking a connection from the pool (`after` only; the duration is the wait).
    Checkout,
    /// Giving a connection back to the pool (`after` only).
    Return,
    /// Closing a connection (`after` only).
    Close,
    /// An application's own named event ([`Hooks::fire`]).
    Custom,
}

impl OperationKind {
    /// A short lowercase name, stable for metric labels (`query`, `commit`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::Query => "query",
            OperationKind::Execute => "execute",
            OperationKind::Batch => "batch",
            OperationKind::Copy => "copy",
            OperationKind::Begin => "begin",
            OperationKind::Commit => "commit",
            OperationKind::Rollback => "rollback",
            OperationKind::Notify => "notify",
            OperationKind::Connect => "connect",
            OperationKind::Checkout => "checkout",
            OperationKind::Return => "return",
            OperationKind::Close => "close",
            OperationKind::Custom => "custom",
        }
    }

    /// The kind of a statement run for `default`: transaction control is recognised by its
    /// first word (`BEGIN`, `START`, `COMMIT`, `END`, `ROLLBACK`, `ABORT`; not `ROLLBACK TO`
    /// a savepoint), `NOTIFY` too.
    pub fn of_sql(sql: &str, default: OperationKind) -> OperationKind {
        let mut words = sql
            .trim_start()
            .split(|c: char| c.is_whitespace() || c == ';')
            .filter(|w| !w.is_empty());
        let first = words.next().unwrap_or("");
        let is = |w: &str| first.eq_ignore_ascii_case(w);
        if is("BEGIN") || is("START") {
            OperationKind::Begin
        } else if is("COMMIT") || is("END") {
            OperationKind::Commit
        } else if is("ROLLBACK") || is("ABORT") {
            match words.next() {
                Some(w) if w.eq_ignore_ascii_case("TO") => default,
                _ => OperationKind::Rollback,
            }
        } else if is("NOTIFY") {
            OperationKind::Notify
        } else {
            default
        }
    }
}

impl fmt::Display for OperationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One operation, as hooks and spans see it. Never holds parameter values.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Operation<'a> {
    /// What it is.
    pub kind: OperationKind,
    /// The event's name for [`OperationKind::Custom`]; the kind's name otherwise.
    pub name: &'a str,
    /// The statement text, with placeholders (`$1`), when there is one.
    pub sql: Option<&'a str>,
    /// `host:port` of the node.
    pub node: &'a str,
    /// The tenant, when the operation runs for one (from [`with_tenant`] unless set).
    pub tenant: Option<Arc<str>>,
    /// Statements in a batch (1 otherwise).
    pub statements: usize,
    /// The statements of a batch, when the driver gives them (empty otherwise).
    pub batch: &'a [&'a str],
    /// The application role acting (from [`with_role`] unless set): what role-based
    /// access checks, and the firewall keys its shapes by.
    pub role: Option<Arc<str>>,
    /// Sent by the library itself, not the application (a tenant's prologue and scope
    /// check, transaction control, a session lookup): see [`internal`]. Policies on the
    /// application's statements (the firewall, role-based access) let these through.
    pub internal: bool,
}

impl<'a> Operation<'a> {
    /// An operation of `kind` on `node`.
    pub fn new(kind: OperationKind, node: &'a str) -> Self {
        Operation {
            kind,
            name: kind.as_str(),
            sql: None,
            node,
            tenant: current_tenant(),
            statements: 1,
            batch: &[],
            role: current_role(),
            internal: INTERNAL.try_with(|_| ()).is_ok(),
        }
    }

    /// With its statement text.
    pub fn with_sql(mut self, sql: &'a str) -> Self {
        self.sql = Some(sql);
        self
    }

    /// With its tenant.
    pub fn with_tenant(mut self, tenant: Option<Arc<str>>) -> Self {
        self.tenant = tenant;
        self
    }

    /// With the number of statements of a batch.
    pub fn with_statements(mut self, n: usize) -> Self {
        self.statements = n;
        self
    }

    /// With the statements of a batch (and their number).
    pub fn with_batch(mut self, statements: &'a [&'a str]) -> Self {
        self.statements = statements.len();
        self.batch = statements;
        self
    }

    /// Every statement text of the operation: its own, or each of a batch's.
    pub fn statements(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.sql.into_iter().chain(self.batch.iter().copied())
    }

    /// The correlation id of the task running it ([`with_correlation_id`]).
    pub fn correlation_id(&self) -> Option<Arc<str>> {
        correlation_id()
    }
}

/// How an operation ended.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Outcome<'a> {
    /// How long it took (for a checkout: the wait).
    pub duration: Duration,
    /// Rows returned or affected, when known.
    pub rows: Option<u64>,
    /// The error, when it failed.
    pub error: Option<&'a Error>,
    /// For a `COMMIT` or `ROLLBACK`: how long the transaction it ended was open.
    pub transaction: Option<Duration>,
}

impl<'a> Outcome<'a> {
    /// An outcome.
    pub fn new(duration: Duration, rows: Option<u64>, error: Option<&'a Error>) -> Self {
        Outcome {
            duration,
            rows,
            error,
            transaction: None,
        }
    }

    /// With the duration of the transaction a `COMMIT` or `ROLLBACK` ended.
    pub fn with_transaction(mut self, open_for: Option<Duration>) -> Self {
        self.transaction = open_for;
        self
    }
}

/// What a `before` hook decides.
#[non_exhaustive]
pub enum Verdict {
    /// Go on.
    Proceed,
    /// Stop: the operation does not run; the caller gets [`ErrorKind::Rejected`] with this
    /// reason.
    Reject(String),
    /// Await this first: `Err(reason)` rejects.
    Wait(BoxFuture<'static, std::result::Result<(), String>>),
}

impl fmt::Debug for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Proceed => f.write_str("Proceed"),
            Verdict::Reject(r) => f.debug_tuple("Reject").field(r).finish(),
            Verdict::Wait(_) => f.write_str("Wait(..)"),
        }
    }
}

/// Code that runs before and after operations; see the [module docs](self).
pub trait Hook: Send + Sync + 'static {
    /// A name for logs and rejection errors.
    fn name(&self) -> &str;

    /// Runs before the operation; may reject it or hand over an async check. The default
    /// proceeds. Not called for lifecycle events that cannot be stopped (checkout, return,
    /// close).
    fn before(&self, op: &Operation<'_>) -> Verdict {
        let _ = op;
        Verdict::Proceed
    }

    /// Runs after the operation (also after a failure, and after a rejection, with the
    /// [`ErrorKind::Rejected`] error as its outcome).
    fn after(&self, op: &Operation<'_>, outcome: &Outcome<'_>) {
        let _ = (op, outcome);
    }
}

struct Entry {
    priority: i32,
    hook: Arc<dyn Hook>,
}

struct Inner {
    hooks: Vec<Entry>,
    spans: bool,
    sql_comments: bool,
    database: String,
    /// Shared with the copies made for other databases.
    panics: Arc<AtomicU64>,
}

/// The hooks of a pool (or provider), shared by its connections; see the
/// [module docs](self). Cheap to clone. The default holds nothing and costs nothing.
#[derive(Clone, Default)]
pub struct Hooks(Option<Arc<Inner>>);

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("Hooks(none)"),
            Some(i) => f
                .debug_struct("Hooks")
                .field(
                    "hooks",
                    &i.hooks.iter().map(|e| e.hook.name()).collect::<Vec<_>>(),
                )
                .field("spans", &i.spans)
                .field("sql_comments", &i.sql_comments)
                .finish(),
        }
    }
}

/// Registries are equal when they are the same one (or both empty).
impl PartialEq for Hooks {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for Hooks {}

/// Builds [`Hooks`].
#[derive(Default)]
pub struct HooksBuilder {
    hooks: Vec<Entry>,
    spans: bool,
    sql_comments: bool,
    database: String,
}

impl fmt::Debug for HooksBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HooksBuilder")
            .field("hooks", &self.hooks.len())
            .finish()
    }
}

impl HooksBuilder {
    /// Adds a hook with a priority (lower runs first; equal priorities in registration
    /// order).
    pub fn hook(mut self, priority: i32, hook: impl Hook) -> Self {
        self.hooks.push(Entry {
            priority,
            hook: Arc::new(hook),
        });
        self
    }

    /// Adds a shared hook (to keep a handle on it, such as an audit log).
    pub fn shared(mut self, priority: i32, hook: Arc<dyn Hook>) -> Self {
        self.hooks.push(Entry { priority, hook });
        self
    }

    /// Whether to open a `tracing` span per operation.
    pub fn spans(mut self, on: bool) -> Self {
        self.spans = on;
        self
    }

    /// Whether to append the correlation id to the SQL as a sqlcommenter comment
    /// (`/*correlation_id='…'*/`), so the server's logs can be joined. Drivers then run such
    /// statements unprepared (one parse each): only statements run with a correlation id
    /// pay for it.
    pub fn sql_comments(mut self, on: bool) -> Self {
        self.sql_comments = on;
        self
    }

    /// The database name recorded on spans (`db.namespace`).
    pub fn database(mut self, name: impl Into<String>) -> Self {
        self.database = name.into();
        self
    }

    /// The registry; `Hooks::default()` (nothing at all) when no hook, span or comment was
    /// asked for.
    pub fn build(mut self) -> Hooks {
        if self.hooks.is_empty() && !self.spans && !self.sql_comments {
            return Hooks(None);
        }
        // Stable: equal priorities keep registration order.
        self.hooks.sort_by_key(|e| e.priority);
        Hooks(Some(Arc::new(Inner {
            hooks: self.hooks,
            spans: self.spans,
            sql_comments: self.sql_comments,
            database: self.database,
            panics: Arc::new(AtomicU64::new(0)),
        })))
    }
}

impl Hooks {
    /// A builder.
    pub fn builder() -> HooksBuilder {
        HooksBuilder::default()
    }

    /// Whether nothing is registered (the zero-cost case).
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// A copy of this registry with one more hook (the original is unchanged; panics are
    /// counted together). For layers that add their own hook to the user's.
    pub fn with_hook(&self, priority: i32, hook: Arc<dyn Hook>) -> Hooks {
        let (mut hooks, spans, sql_comments, database, panics) = match &self.0 {
            Some(i) => (
                i.hooks
                    .iter()
                    .map(|e| Entry {
                        priority: e.priority,
                        hook: e.hook.clone(),
                    })
                    .collect(),
                i.spans,
                i.sql_comments,
                i.database.clone(),
                i.panics.clone(),
            ),
            None => (Vec::new(), false, false, String::new(), Arc::default()),
        };
        hooks.push(Entry { priority, hook });
        hooks.sort_by_key(|e| e.priority);
        Hooks(Some(Arc::new(Inner {
            hooks,
            spans,
            sql_comments,
            database,
            panics,
        })))
    }

    /// Hooks that panicked so far (in this registry and the copies pools made of it).
    pub fn panics(&self) -> u64 {
        self.0.as_ref().map_or(0, |i| i.panics.load(Relaxed))
    }

    /// This registry with `database` as the span's `db.namespace` (pools set it from their
    /// configuration).
    pub fn for_database(&self, database: &str) -> Hooks {
        match &self.0 {
            Some(i) if i.database != database => Hooks(Some(Arc::new(Inner {
                hooks: i
                    .hooks
                    .iter()
                    .map(|e| Entry {
                        priority: e.priority,
                        hook: e.hook.clone(),
                    })
                    .collect(),
                spans: i.spans,
                sql_comments: i.sql_comments,
                database: database.to_owned(),
                panics: i.panics.clone(),
            }))),
            _ => self.clone(),
        }
    }

    /// The sqlcommenter comment to append to `sql`, when comments are on and the task has a
    /// correlation id: `sql /*correlation_id='…'*/` (the value percent-encoded as
    /// sqlcommenter asks).
    pub fn commented(&self, sql: &str) -> Option<String> {
        let inner = self.0.as_ref()?;
        if !inner.sql_comments {
            return None;
        }
        let id = correlation_id()?;
        let mut out = String::with_capacity(sql.len() + id.len() + 24);
        out.push_str(sql.trim_end().trim_end_matches(';'));
        out.push_str(" /*correlation_id='");
        for b in id.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out.push_str("'*/");
        Some(out)
    }

    /// Runs `fut` as `op`: the `before` hooks (which may reject it), a span around it, then
    /// the `after` hooks with its outcome (`rows` counts the rows of a success). With
    /// nothing registered this is `fut.await`.
    ///
    /// # Errors
    /// [`ErrorKind::Rejected`] when a hook rejected it (`fut` was not polled), else `fut`'s
    /// own result.
    pub async fn observe<T>(
        &self,
        op: &Operation<'_>,
        rows: impl FnOnce(&T) -> Option<u64>,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        self.observe_tx(op, rows, None, fut).await
    }

    /// As [`observe`](Self::observe), telling the `after` hooks when the transaction this
    /// operation may end began (`tx_started`, for `COMMIT` and `ROLLBACK`).
    ///
    /// # Errors
    /// As [`observe`](Self::observe).
    pub async fn observe_tx<T>(
        &self,
        op: &Operation<'_>,
        rows: impl FnOnce(&T) -> Option<u64>,
        tx_started: Option<Instant>,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let Some(inner) = &self.0 else {
            return fut.await;
        };
        if let Err(e) = inner.before(op).await {
            // Refusals are outcomes too: the audit log records deny as well as allow.
            inner.after(op, &Outcome::new(Duration::ZERO, None, Some(&e)));
            return Err(e);
        }
        let start = Instant::now();
        let (r, span) = if inner.spans {
            let span = inner.span(op);
            let r = tracing::Instrument::instrument(fut, span.clone()).await;
            (r, Some(span))
        } else {
            (fut.await, None)
        };
        let count = r.as_ref().ok().and_then(rows);
        let ends_tx = matches!(op.kind, OperationKind::Commit | OperationKind::Rollback);
        let outcome = Outcome::new(start.elapsed(), count, r.as_ref().err())
            .with_transaction(tx_started.filter(|_| ends_tx).map(|t| t.elapsed()));
        if let Some(span) = span {
            record(&span, &outcome);
        }
        inner.after(op, &outcome);
        r
    }

    /// Runs the `before` hooks for `op` alone (for lifecycle steps the caller runs itself).
    ///
    /// # Errors
    /// [`ErrorKind::Rejected`] when a hook rejected it.
    pub async fn before(&self, op: &Operation<'_>) -> Result<()> {
        match &self.0 {
            None => Ok(()),
            Some(inner) => inner.before(op).await,
        }
    }

    /// Runs the `after` hooks for `op` alone (lifecycle events: checkout, return, close).
    pub fn after(&self, op: &Operation<'_>, outcome: &Outcome<'_>) {
        if let Some(inner) = &self.0 {
            inner.after(op, outcome);
        }
    }

    /// Fires an application's own named event through every hook (`before`, which may
    /// reject it, then `after`).
    ///
    /// # Errors
    /// [`ErrorKind::Rejected`] when a hook rejected it.
    pub async fn fire(&self, name: &str, node: &str) -> Result<()> {
        let mut op = Operation::new(OperationKind::Custom, node);
        op.name = name;
        self.observe(&op, |_| None, async { Ok(()) }).await
    }
}

impl Inner {
    async fn before(&self, op: &Operation<'_>) -> Result<()> {
        for e in &self.hooks {
            let verdict = match std::panic::catch_unwind(AssertUnwindSafe(|| e.hook.before(op))) {
                Ok(v) => v,
                Err(p) => {
                    self.panicked(e.hook.name(), p.as_ref());
                    continue;
                }
            };
            let refused = match verdict {
                Verdict::Proceed => None,
                Verdict::Reject(reason) => Some(reason),
                Verdict::Wait(check) => match CatchUnwind(check).await {
                    Ok(Ok(())) => None,
                    Ok(Err(reason)) => Some(reason),
                    Err(p) => {
                        self.panicked(e.hook.name(), p.as_ref());
                        None
                    }
                },
            };
            if let Some(reason) = refused {
                return Err(Error::new(
                    ErrorKind::Rejected,
                    format!(
                        "{} rejected by hook `{}`: {reason}",
                        if op.kind == OperationKind::Custom {
                            op.name
                        } else {
                            op.kind.as_str()
                        },
                        e.hook.name()
                    ),
                )
                .with_node(op.node.to_owned())
                .with_hint("the operation was not sent to the server"));
            }
        }
        Ok(())
    }

    fn after(&self, op: &Operation<'_>, outcome: &Outcome<'_>) {
        for e in &self.hooks {
            if let Err(p) = std::panic::catch_unwind(AssertUnwindSafe(|| e.hook.after(op, outcome)))
            {
                self.panicked(e.hook.name(), p.as_ref());
            }
        }
    }

    fn panicked(&self, hook: &str, p: &(dyn std::any::Any + Send)) {
        self.panics.fetch_add(1, Relaxed);
        let text = p
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a non-string panic".to_owned());
        tracing::error!(hook, panic = %text, "hook panicked; the operation goes on");
    }

    fn span(&self, op: &Operation<'_>) -> tracing::Span {
        let (address, port) = match op.node.rsplit_once(':') {
            Some((a, p)) => (a, p.parse::<u16>().ok()),
            None => (op.node, None),
        };
        let id = correlation_id();
        let span = tracing::info_span!(
            "pgprovider.operation",
            otel.name = %format_args!("{} {}", op.name, self.database),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            db.system.name = "postgresql",
            db.namespace = %self.database,
            db.operation.name = op.name,
            db.query.text = op.sql,
            db.operation.batch.size = tracing::field::Empty,
            db.response.status_code = tracing::field::Empty,
            db.response.returned_rows = tracing::field::Empty,
            error.type = tracing::field::Empty,
            server.address = address,
            server.port = port,
            pgprovider.tenant = op.tenant.as_deref(),
            pgprovider.correlation_id = id.as_deref(),
        );
        if op.kind == OperationKind::Batch {
            span.record("db.operation.batch.size", op.statements);
        }
        span
    }
}

fn record(span: &tracing::Span, outcome: &Outcome<'_>) {
    if let Some(n) = outcome.rows {
        span.record("db.response.returned_rows", n);
    }
    match outcome.error {
        None => {
            span.record("otel.status_code", "OK");
        }
        Some(e) => {
            span.record("otel.status_code", "ERROR");
            span.record("error.type", e.kind().as_str());
            if let Some(s) = e.sql_state() {
                span.record("db.response.status_code", s.code());
            }
        }
    }
}

/// Polls a future, catching a panic.
struct CatchUnwind<F>(F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = std::thread::Result<F::Output>;
    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let f = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(f).poll(cx))) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Err(p) => std::task::Poll::Ready(Err(p)),
        }
    }
}

tokio::task_local! {
    static CORRELATION_ID: Arc<str>;
    static TENANT: Arc<str>;
    static ROLE: Arc<str>;
    static INTERNAL: ();
}

/// Runs `fut` with `role` as the application role acting for every operation inside it
/// (role-based access checks it; the firewall keys its shapes by it; audit lines name it).
/// [`Provider::as_role`](https://docs.rs/pgprovider) handles do this for you.
pub async fn with_role<F: Future>(role: impl Into<Arc<str>>, fut: F) -> F::Output {
    ROLE.scope(role.into(), fut).await
}

/// The application role of the running task, if one was set.
pub fn current_role() -> Option<Arc<str>> {
    ROLE.try_with(Arc::clone).ok()
}

/// Runs `fut` as the library's own work: its operations are marked
/// [`internal`](Operation::internal) (a tenant's prologue, transaction control, session
/// lookups). For drivers and the provider; an application has no reason to call it, and
/// doing so takes its statements past the firewall and role checks.
#[doc(hidden)]
pub async fn internal<F: Future>(fut: F) -> F::Output {
    INTERNAL.scope((), fut).await
}

/// Runs `fut` with `tenant` as the tenant of every operation inside it (spans, hooks, metric
/// labels, audit lines). Tenant handles do this for you.
pub async fn with_tenant<F: Future>(tenant: impl Into<Arc<str>>, fut: F) -> F::Output {
    TENANT.scope(tenant.into(), fut).await
}

/// The tenant of the running task, if one was set.
pub fn current_tenant() -> Option<Arc<str>> {
    TENANT.try_with(Arc::clone).ok()
}

/// Runs `fut` with `id` as the correlation id of every operation inside it (spans, hooks,
/// audit lines, and sqlcommenter comments when on).
pub async fn with_correlation_id<F: Future>(id: impl Into<Arc<str>>, fut: F) -> F::Output {
    CORRELATION_ID.scope(id.into(), fut).await
}

/// The correlation id of the running task, if one was set.
pub fn correlation_id() -> Option<Arc<str>> {
    CORRELATION_ID.try_with(Arc::clone).ok()
}

/// A stable fingerprint of a statement: literals (strings, numbers) replaced by `?` and
/// whitespace collapsed, then hashed (FNV-1a, 64 bits, as 16 hex digits). Statements that
/// differ only in their literal values share a fingerprint; nothing of the values can be
/// read from it.
pub fn fingerprint(sql: &str) -> String {
    format!("{:016x}", fnv1a(normalize(sql).as_bytes()))
}

/// `sql` with string and number literals replaced by `?` and runs of whitespace collapsed
/// to one space (comments dropped).
pub fn normalize(sql: &str) -> String {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    let mut space = false;
    let push = |out: &mut String, s: &str, space: &mut bool| {
        if *space && !out.is_empty() {
            out.push(' ');
        }
        *space = false;
        out.push_str(s);
    };
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            space = true;
            i += 1;
        } else if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            space = true;
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
            space = true;
        } else if c == b'\'' {
            i += 1;
            while i < b.len() {
                if b[i] == b'\'' {
                    if b.get(i + 1) == Some(&b'\'') {
                        i += 2;
                        continue;
                    }
                    break;
                }
                i += 1;
            }
            i += 1;
            push(&mut out, "?", &mut space);
        } else if c.is_ascii_digit()
            && !out
                .chars()
                .last()
                .is_some_and(|p| p.is_ascii_alphanumeric() || p == '_' || p == '$')
            || (space || out.is_empty()) && c.is_ascii_digit()
        {
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                i += 1;
            }
            push(&mut out, "?", &mut space);
        } else {
            let start = i;
            i += sql[i..].chars().next().map_or(1, char::len_utf8);
            push(&mut out, &sql[start..i], &mut space);
        }
    }
    out
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_classified_by_their_first_word() {
        let q = OperationKind::Query;
        assert_eq!(
            OperationKind::of_sql("begin isolation level serializable", q),
            OperationKind::Begin
        );
        assert_eq!(
            OperationKind::of_sql("  START TRANSACTION", q),
            OperationKind::Begin
        );
        assert_eq!(OperationKind::of_sql("COMMIT", q), OperationKind::Commit);
        assert_eq!(OperationKind::of_sql("end;", q), OperationKind::Commit);
        assert_eq!(
            OperationKind::of_sql("ROLLBACK", q),
            OperationKind::Rollback
        );
        assert_eq!(OperationKind::of_sql("abort", q), OperationKind::Rollback);
        assert_eq!(OperationKind::of_sql("ROLLBACK TO SAVEPOINT a", q), q);
        assert_eq!(
            OperationKind::of_sql("NOTIFY ch, 'x'", q),
            OperationKind::Notify
        );
        assert_eq!(OperationKind::of_sql("SELECT 1", q), q);
        assert_eq!(
            OperationKind::of_sql("", OperationKind::Execute),
            OperationKind::Execute
        );
        assert_eq!(OperationKind::Checkout.to_string(), "checkout");
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    struct Rec {
        name: &'static str,
        log: Arc<std::sync::Mutex<Vec<String>>>,
        mode: u8,
    }

    impl Hook for Rec {
        fn name(&self) -> &str {
            self.name
        }
        fn before(&self, op: &Operation<'_>) -> Verdict {
            self.log
                .lock()
                .unwrap()
                .push(format!("before {} {}", self.name, op.name));
            match self.mode {
                1 => Verdict::Reject("no".into()),
                2 => Verdict::Wait(Box::pin(async { Err("not now".to_owned()) })),
                3 => panic!("sync panic"),
                4 => Verdict::Wait(Box::pin(async { panic!("async panic") })),
                5 => Verdict::Wait(Box::pin(async { Ok(()) })),
                _ => Verdict::Proceed,
            }
        }
        fn after(&self, op: &Operation<'_>, outcome: &Outcome<'_>) {
            if self.mode == 6 {
                panic!("after panic");
            }
            self.log.lock().unwrap().push(format!(
                "after {} {} {:?} {}",
                self.name,
                op.name,
                outcome.rows,
                outcome.error.is_some()
            ));
        }
    }

    #[test]
    fn hooks_order_reject_wait_and_contain_panics() {
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let rec = |name, mode| Rec {
            name,
            log: log.clone(),
            mode,
        };
        let hooks = Hooks::builder()
            .hook(2, rec("late", 0))
            .hook(1, rec("waits", 5))
            .hook(1, rec("sync-panic", 3))
            .hook(1, rec("async-panic", 4))
            .hook(1, rec("after-panic", 6))
            .shared(0, Arc::new(rec("first", 0)))
            .database("db")
            .build();
        assert!(!hooks.is_empty());
        assert!(format!("{hooks:?}").contains("first"));
        let op = Operation::new(OperationKind::Query, "n:1").with_sql("SELECT 1");
        let r = block_on(hooks.observe(&op, |v: &u64| Some(*v), async { Ok(3u64) }));
        assert_eq!(r.unwrap(), 3);
        assert_eq!(hooks.panics(), 3);
        let seen = log.lock().unwrap().clone();
        assert_eq!(seen[0], "before first query");
        assert_eq!(seen[1], "before waits query");
        assert!(
            seen.contains(&"after late query Some(3) false".to_owned()),
            "{seen:?}"
        );
        // The same registry for another database shares the panic count.
        let other = hooks.for_database("other");
        assert_ne!(other, hooks);
        assert_eq!(hooks.for_database("db"), hooks);
        assert_eq!(other.panics(), 3);

        // Rejections, sync and async: the operation never runs.
        for mode in [1, 2] {
            let h = Hooks::builder().hook(0, rec("guard", mode)).build();
            let ran = std::cell::Cell::new(false);
            let e = block_on(h.observe(&op, |_| None, async {
                ran.set(true);
                Ok(())
            }))
            .unwrap_err();
            assert!(!ran.get());
            assert_eq!(e.kind(), ErrorKind::Rejected);
            assert_eq!(e.node(), Some("n:1"));
            assert!(
                e.message().starts_with("query rejected by hook `guard`"),
                "{e}"
            );
            let e = block_on(h.fire("refresh", "app")).unwrap_err();
            assert!(e.message().starts_with("refresh rejected"), "{e}");
            assert!(block_on(h.before(&op)).is_err());
        }
        // Lifecycle events and the empty registry.
        let empty = Hooks::default();
        assert!(empty.is_empty() && empty.panics() == 0);
        assert_eq!(format!("{empty:?}"), "Hooks(none)");
        assert_eq!(Hooks::builder().build(), empty);
        block_on(empty.before(&op)).unwrap();
        empty.after(&op, &Outcome::new(Duration::ZERO, None, None));
        block_on(empty.fire("x", "n")).unwrap();
        assert!(format!("{:?}", Verdict::Proceed).contains("Proceed"));
        assert!(format!("{:?}", Verdict::Reject("r".into())).contains("Reject"));
        assert!(format!("{:?}", Verdict::Wait(Box::pin(async { Ok(()) }))).contains("Wait"));
        assert!(format!("{:?}", HooksBuilder::default()).contains("HooksBuilder"));
    }

    #[test]
    fn spans_record_outcomes_and_comments_carry_the_correlation_id() {
        let hooks = Hooks::builder()
            .spans(true)
            .sql_comments(true)
            .database("db")
            .build();
        let op = Operation::new(OperationKind::Batch, "h:5432")
            .with_sql("SELECT 1")
            .with_statements(3)
            .with_tenant(Some("t".into()));
        assert_eq!(op.tenant.as_deref(), Some("t"));
        let err = crate::Error::database(crate::SqlState::SERIALIZATION_FAILURE, "x");
        let r = block_on(hooks.observe(&op, |_| None, async { Err::<(), _>(err) }));
        assert!(r.is_err());
        block_on(hooks.observe(&op, |_: &()| Some(1), async { Ok(()) })).unwrap();
        assert_eq!(hooks.commented("SELECT 1"), None, "no correlation id");
        let c = block_on(with_correlation_id("req 1/'x'", async {
            assert_eq!(correlation_id().as_deref(), Some("req 1/'x'"));
            hooks.commented("SELECT 1;")
        }));
        assert_eq!(
            c.as_deref(),
            Some("SELECT 1 /*correlation_id='req%201%2F%27x%27'*/")
        );
        let off = Hooks::builder().spans(true).build();
        assert_eq!(
            block_on(with_correlation_id("a", async {
                off.commented("SELECT 1")
            })),
            None
        );
        let t = block_on(with_tenant("acme", async {
            Operation::new(OperationKind::Query, "n").tenant
        }));
        assert_eq!(t.as_deref(), Some("acme"));
        assert_eq!(current_tenant(), None);
        let o = Outcome::new(Duration::ZERO, None, None).with_transaction(Some(Duration::ZERO));
        assert_eq!(o.transaction, Some(Duration::ZERO));
    }

    #[test]
    fn fingerprints_ignore_literal_values() {
        assert_eq!(
            normalize("SELECT * FROM t WHERE a = 'x''y' AND b = 42.5  -- note\n AND c = $1"),
            "SELECT * FROM t WHERE a = ? AND b = ? AND c = $1"
        );
        assert_eq!(
            normalize("SELECT col1, t2.x FROM t2 /* hi */ LIMIT 10"),
            "SELECT col1, t2.x FROM t2 LIMIT ?"
        );
        assert_eq!(
            fingerprint("SELECT 1 FROM t WHERE id = 5"),
            fingerprint("SELECT 2 FROM t WHERE id =  77")
        );
        assert_ne!(
            fingerprint("SELECT a FROM t"),
            fingerprint("SELECT b FROM t")
        );
        assert_eq!(fingerprint("x").len(), 16);
        assert_eq!(normalize("SELECT 'unterminated"), "SELECT ?");
        assert_eq!(normalize("/* only"), "");
        assert_eq!(normalize("SELECT 'é', 'ü' || 'a'"), "SELECT ?, ? || ?");
    }
}
