//! Creating and dropping tenants (schema, role, database, row-level policies), idempotent,
//! with migrations.

use super::*;

impl<D: Driver + Clone> Tenancy<D>
where
    D::Connection: Queries,
{
    /// Creates what `tenant` needs (idempotent): its schema (and role, with the role
    /// strategy), the shared row-level role, or its database; then applies `migrations` to
    /// the schema or database (none for the row-level strategy, whose tables are shared).
    ///
    /// # Errors
    /// [`ErrorKind::Config`] for an invalid name; the server's error.
    pub async fn create_tenant(&self, tenant: &str, migrations: Option<&Migrator>) -> Result<()> {
        check_name(tenant)?;
        let o = &self.inner.options;
        let schema = ident(&format!("{}{tenant}", o.schema_prefix));
        let mut conn = self.provider.write().await?;
        let c = &mut *conn;
        let r = async {
            match self.strategy_of(tenant) {
                Strategy::Schema => {
                    c.simple_query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                        .await?;
                }
                Strategy::Role => {
                    let role_name = format!("{}{tenant}", o.role_prefix);
                    ensure_role(c, &role_name).await?;
                    let role = ident(&role_name);
                    c.simple_query(&format!(
                        "CREATE SCHEMA IF NOT EXISTS {schema} AUTHORIZATION {role}; \
                         ALTER SCHEMA {schema} OWNER TO {role}; \
                         ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT ALL ON TABLES TO {role}; \
                         ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT ALL ON SEQUENCES TO {role}"
                    ))
                    .await?;
                }
                Strategy::RowLevel => {
                    ensure_role(c, &o.row_level_role).await?;
                }
                Strategy::Database => {
                    let db = format!("{}{tenant}", o.database_prefix);
                    let exists = c
                        .simple_query(&format!(
                            "SELECT 1 FROM pg_database WHERE datname = '{db}'"
                        ))
                        .await?;
                    if exists.is_empty() {
                        match c.simple_query(&format!("CREATE DATABASE {}", ident(&db))).await {
                            Ok(_) => {}
                            // Created meanwhile by a concurrent call: fine.
                            Err(e) if e.sql_state().is_some_and(|s| s.code() == "42P04") => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
            }
            Ok::<_, Error>(())
        }
        .await;
        drop(conn);
        r.map_err(|e| e.with_tenant(tenant))?;
        let Some(migrator) = migrations else {
            return Ok(());
        };
        match self.strategy_of(tenant) {
            Strategy::Schema | Strategy::Role => {
                let m = migrator
                    .clone()
                    .with_schema(format!("{}{tenant}", o.schema_prefix));
                let mut conn = self.provider.write().await?;
                Box::pin(m.up(&mut *conn, None))
                    .await
                    .map_err(|e| e.with_tenant(tenant))?;
                if self.strategy_of(tenant) == Strategy::Role {
                    let role = ident(&format!("{}{tenant}", o.role_prefix));
                    conn.simple_query(&format!(
                        "GRANT ALL ON ALL TABLES IN SCHEMA {schema} TO {role}; \
                         GRANT ALL ON ALL SEQUENCES IN SCHEMA {schema} TO {role}"
                    ))
                    .await
                    .map_err(|e| e.with_tenant(tenant))?;
                }
            }
            Strategy::Database => {
                let pool = self.database_pool(tenant).await?;
                let mut conn = pool.get().await?;
                Box::pin(migrator.up(&mut *conn, None))
                    .await
                    .map_err(|e| e.with_tenant(tenant))?;
            }
            Strategy::RowLevel => {}
        }
        Ok(())
    }

    /// Removes `tenant` (idempotent): its schema and everything in it (and its role), its
    /// rows in every table with the row-level policy, or its database (its pool closed
    /// first).
    ///
    /// # Errors
    /// [`ErrorKind::Config`] for an invalid name; the server's error.
    pub async fn drop_tenant(&self, tenant: &str) -> Result<()> {
        check_name(tenant)?;
        let o = &self.inner.options;
        let strategy = self.strategy_of(tenant);
        if strategy == Strategy::Database {
            let closing: Vec<Pool<D>> = {
                let mut dbs = lock(&self.inner.databases);
                let prefix = format!("{}{tenant}@", o.database_prefix);
                let keys: Vec<String> = dbs
                    .keys()
                    .filter(|k| k.starts_with(&prefix))
                    .cloned()
                    .collect();
                keys.iter()
                    .filter_map(|k| dbs.remove(k))
                    .map(|p| p.pool)
                    .collect()
            };
            for p in closing {
                p.close().await;
            }
        }
        let mut conn = self.provider.write().await?;
        let schema = ident(&format!("{}{tenant}", o.schema_prefix));
        let sql = match strategy {
            Strategy::Schema => format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
            Strategy::Role => {
                let role_name = format!("{}{tenant}", o.role_prefix);
                let role = ident(&role_name);
                format!(
                    "DROP SCHEMA IF EXISTS {schema} CASCADE; \
                     DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role_name}') THEN \
                     EXECUTE 'DROP OWNED BY {role}'; EXECUTE 'DROP ROLE {role}'; END IF; END $$"
                )
            }
            Strategy::RowLevel => {
                let tables = conn
                    .simple_query(
                        "SELECT format('%I.%I', schemaname, tablename) FROM pg_policies \
                         WHERE policyname = 'pgprovider_tenant'",
                    )
                    .await
                    .map_err(|e| e.with_tenant(tenant))?;
                tables
                    .iter()
                    .filter_map(|r| r.get(0))
                    .map(|t| format!("DELETE FROM {t} WHERE tenant_id = '{tenant}'"))
                    .collect::<Vec<_>>()
                    .join("; ")
            }
            Strategy::Database => format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                ident(&format!("{}{tenant}", o.database_prefix))
            ),
        };
        if !sql.is_empty() {
            conn.simple_query(&sql)
                .await
                .map_err(|e| e.with_tenant(tenant))?;
        }
        Ok(())
    }

    /// Puts `table` (with a `tenant_id text` column) under the row-level strategy: row
    /// level security enabled and forced, a policy `pgprovider_tenant` admitting only rows
    /// whose `tenant_id` is the tenant's (for reads and writes), and the shared role granted
    /// the table. Idempotent.
    ///
    /// # Errors
    /// The server's error (no such table or column, say).
    pub async fn enable_row_level(&self, table: &str) -> Result<()> {
        let role_name = &self.inner.options.row_level_role;
        let mut conn = self.provider.write().await?;
        ensure_role(&mut *conn, role_name).await?;
        let role = ident(role_name);
        let t = table.split('.').map(ident).collect::<Vec<_>>().join(".");
        conn.simple_query(&format!(
            "ALTER TABLE {t} ENABLE ROW LEVEL SECURITY; ALTER TABLE {t} FORCE ROW LEVEL SECURITY; \
             DROP POLICY IF EXISTS pgprovider_tenant ON {t}; \
             CREATE POLICY pgprovider_tenant ON {t} \
             USING (tenant_id = current_setting('app.tenant_id', true)) \
             WITH CHECK (tenant_id = current_setting('app.tenant_id', true)); \
             GRANT SELECT, INSERT, UPDATE, DELETE ON {t} TO {role}; \
             DO $$ DECLARE s regclass; BEGIN \
             FOR s IN SELECT d.objid::regclass FROM pg_depend d JOIN pg_class c ON c.oid = d.objid \
             WHERE c.relkind = 'S' AND d.refobjid = '{t}'::regclass LOOP \
             EXECUTE format('GRANT USAGE, SELECT ON SEQUENCE %s TO %I', s, '{role_name}'); END LOOP; END $$"
        ))
        .await?;
        Ok(())
    }
}

/// Creates the role `name` (no login) if missing, and lets the login role switch to it.
async fn ensure_role<C: Connection>(c: &mut C, name: &str) -> Result<()> {
    let role = ident(name);
    c.simple_query(&format!(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{name}') THEN \
         CREATE ROLE {role} NOLOGIN; END IF; END $$"
    ))
    .await?;
    // Creating it concurrently elsewhere may still race; granting membership is idempotent.
    c.simple_query(&format!("GRANT {role} TO CURRENT_USER"))
        .await
        .map(|_| ())
        .or_else(|e| {
            // 0LP01: "role … is a member of role …" already: fine.
            if e.sql_state().is_some_and(|s| s.code() == "0LP01") {
                Ok(())
            } else {
                Err(e)
            }
        })
}
