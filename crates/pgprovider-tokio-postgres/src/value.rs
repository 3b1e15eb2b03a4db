//! Driver-neutral values ([`Value`], [`ValueRow`]) on this driver's statement path: each
//! value is sent as the type the server expects for its parameter where it converts
//! exactly (an integer for an `int2`/`int4`/`int8` parameter, text for a text-like one).

use crate::conn::PgConnection;
use crate::query::PgRow;
use pgprovider_core::{Queries, Result, Value, ValueQueries, ValueRow};
use std::error::Error as StdError;
use std::sync::Arc;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

/// A [`Value`] as a tokio-postgres parameter.
#[derive(Debug)]
struct PgValue<'a>(&'a Value);

type BoxError = Box<dyn StdError + Sync + Send>;

impl ToSql for PgValue<'_> {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, BoxError> {
        match (self.0, ty) {
            (Value::Null, _) => Ok(IsNull::Yes),
            (Value::Int(i), &Type::INT2) => i16::try_from(*i)?.to_sql(ty, out),
            (Value::Int(i), &Type::INT4) => i32::try_from(*i)?.to_sql(ty, out),
            (Value::Int(i), &Type::INT8) => i.to_sql(ty, out),
            (Value::Int(i), &Type::FLOAT8) if i.unsigned_abs() <= 1 << 53 => {
                (*i as f64).to_sql(ty, out)
            }
            (Value::Float(f), &Type::FLOAT8) => f.to_sql(ty, out),
            (Value::Float(f), &Type::FLOAT4) => (*f as f32).to_sql(ty, out),
            (Value::Bool(b), &Type::BOOL) => b.to_sql(ty, out),
            (Value::Bytes(b), &Type::BYTEA) => b.to_sql(ty, out),
            (Value::Text(s), t) if <&str as ToSql>::accepts(t) => s.as_str().to_sql(ty, out),
            (v, t) => Err(format!(
                "cannot send {v:?} as a parameter of type {t}; cast the parameter in the SQL ($1::{t}) or use the driver's own types"
            )
            .into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn names(row: &PgRow) -> Arc<[String]> {
    row.columns().iter().map(|c| c.name().to_owned()).collect()
}

impl ValueQueries for PgConnection {
    async fn query_values(&mut self, sql: &str, params: &[Value]) -> Result<Vec<ValueRow>> {
        let wrapped: Vec<PgValue<'_>> = params.iter().map(PgValue).collect();
        let refs: Vec<&(dyn ToSql + Sync)> =
            wrapped.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        let rows = self.query(sql, &refs).await?;
        let Some(first) = rows.first() else {
            return Ok(Vec::new());
        };
        let names = names(first);
        rows.iter()
            .map(|r| ValueRow::read(r, names.clone()))
            .collect()
    }

    async fn execute_values(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        let wrapped: Vec<PgValue<'_>> = params.iter().map(PgValue).collect();
        let refs: Vec<&(dyn ToSql + Sync)> =
            wrapped.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        self.execute(sql, &refs).await
    }
}
