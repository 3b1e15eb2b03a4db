//! Reading `DATABASE_URL` and libpq's `PG*` variables. Only [`ConfigBuilder::from_env`]
//! reads the process environment; nothing else does behind the caller's back.

use super::builder::ConfigBuilder;

/// The `PG*` variables read, and the URL key each one sets.
pub(super) const PG_VARS: &[(&str, &str)] = &[
    ("PGHOST", "host"),
    ("PGPORT", "port"),
    ("PGUSER", "user"),
    ("PGPASSWORD", "password"),
    ("PGPASSFILE", "passfile"),
    ("PGDATABASE", "dbname"),
    ("PGSSLMODE", "sslmode"),
    ("PGSSLROOTCERT", "sslrootcert"),
    ("PGSSLCERT", "sslcert"),
    ("PGSSLKEY", "sslkey"),
    ("PGTARGETSESSIONATTRS", "target_session_attrs"),
    ("PGLOADBALANCEHOSTS", "load_balance_hosts"),
    ("PGAPPNAME", "application_name"),
    ("PGCONNECT_TIMEOUT", "connect_timeout"),
    ("PGOPTIONS", "options"),
];

impl ConfigBuilder {
    /// A builder from the process environment: `DATABASE_URL` first, then the `PG*`
    /// variables for whatever the URL leaves out (libpq's precedence). Setters called
    /// afterwards override both.
    pub fn from_env() -> Self {
        Self::from_env_vars(std::env::vars())
    }

    /// As [`from_env`](Self::from_env), from the given variables instead of the process
    /// environment (handy in tests).
    ///
    /// ```
    /// use pgprovider::Config;
    /// let config = pgprovider::ConfigBuilder::from_env_vars([
    ///     ("DATABASE_URL", "postgres://app@db1/orders"),
    ///     ("PGPORT", "6432"),
    ///     ("PGDATABASE", "ignored_because_the_url_names_one"),
    /// ])
    /// .build()?;
    /// assert_eq!(config.nodes()[0].port(), 6432);
    /// assert_eq!(config.dbname(), "orders");
    /// # Ok::<(), pgprovider::ConfigError>(())
    /// ```
    pub fn from_env_vars<K, V>(vars: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let vars: Vec<(String, String)> = vars
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned()))
            .collect();
        let get = |name: &str| {
            vars.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .filter(|v| !v.is_empty())
        };
        let mut b = match get("DATABASE_URL") {
            Some(url) => ConfigBuilder::from_url(url),
            None => ConfigBuilder::new(),
        };
        for (var, key) in PG_VARS {
            let Some(value) = get(var) else { continue };
            if b.is_set(key) {
                continue;
            }
            let before = b.problems.len();
            b.apply(key, value);
            for p in &mut b.problems[before..] {
                p.field = format!("{var} ({key})");
            }
        }
        b
    }

    fn is_set(&self, key: &str) -> bool {
        match key {
            "host" => !self.nodes.is_empty(),
            "port" => self.default_port.is_some() || self.nodes.iter().any(|n| n.1.is_some()),
            "user" => self.user.is_some(),
            "password" => self.password.is_some(),
            "passfile" => self.passfile.is_some(),
            "dbname" => self.dbname.is_some(),
            "sslmode" => self.ssl_mode.is_some(),
            "sslrootcert" => self.ssl_root_cert.is_some(),
            "sslcert" => self.ssl_cert.is_some(),
            "sslkey" => self.ssl_key.is_some(),
            "target_session_attrs" => self.target_session_attrs.is_some(),
            "load_balance_hosts" => self.load_balance_hosts.is_some(),
            "application_name" => self.application_name.is_some(),
            "connect_timeout" => self.connect_timeout.is_some(),
            "options" => self.options.is_some(),
            _ => false,
        }
    }
}
