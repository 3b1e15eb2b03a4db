//! Driver-neutral values and rows, for code that picks its driver at run time (the driver
//! registry's `AnyDriver`): parameters as [`Value`]s, rows as [`ValueRow`]s, through every
//! driver that implements [`ValueQueries`].
//!
//! They cover the common types: `bool`, integers (`int2`, `int4`, `int8`), floats (`float4`,
//! `float8`), text (`text`, `varchar`, `name`, `bpchar`), `bytea`, and NULL. A column of
//! another type is refused with a hint to cast it (`SELECT amount::text …`); a parameter is
//! converted to the type the server expects where the driver can (an integer for an `int4`
//! parameter), else sent as the value's own type.
//!
//! ```
//! use pgprovider_core::{Column, Value, ValueRow};
//! let row = ValueRow::new(vec!["id".into(), "name".into()].into(), vec![Value::Int(7), Value::from("ada")]);
//! let id: i64 = row.column(0)?;
//! let name: String = row.column_named("name")?;
//! let missing: Option<i32> = ValueRow::new(vec!["n".into()].into(), vec![Value::Null]).column(0)?;
//! assert_eq!((id, name.as_str(), missing), (7, "ada", None));
//! # Ok::<(), pgprovider_core::Error>(())
//! ```

use crate::{Column, Connection, Error, ErrorKind, Result};
use std::future::Future;
use std::sync::Arc;

/// A parameter or column value.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Value {
    /// SQL NULL.
    Null,
    /// `bool`.
    Bool(bool),
    /// `int2`, `int4` or `int8`.
    Int(i64),
    /// `float4` or `float8`.
    Float(f64),
    /// `text`, `varchar`, `name`, `bpchar`.
    Text(String),
    /// `bytea`.
    Bytes(Vec<u8>),
}

macro_rules! value_from {
    ($($t:ty => $v:ident $(as $as:ty)?),* $(,)?) => {
        $(impl From<$t> for Value {
            fn from(x: $t) -> Self {
                Value::$v(x $(as $as)?)
            }
        })*
    };
}

value_from!(bool => Bool, i16 => Int as i64, i32 => Int as i64, i64 => Int, f32 => Float as f64, f64 => Float, String => Text, Vec<u8> => Bytes);

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Text(s.to_owned())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// A result row of [`Value`]s with its column names.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueRow {
    columns: Arc<[String]>,
    values: Vec<Value>,
}

impl ValueRow {
    /// A row of `values` named by `columns` (shared by the rows of one result).
    pub fn new(columns: Arc<[String]>, values: Vec<Value>) -> Self {
        ValueRow { columns, values }
    }

    /// Reads the row as a [`FromRow`](crate::FromRow) type (a tuple, or a struct deriving
    /// `FromRow`).
    ///
    /// # Errors
    /// [`ErrorKind::Decode`] when a column is missing or has another type.
    pub fn to<T: crate::FromRow<ValueRow>>(&self) -> Result<T> {
        T::from_row(self)
    }

    /// The column names.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The values, in column order.
    pub fn values(&self) -> &[Value] {
        &self.values
    }

    /// The value of column `idx`, or `None` past the last.
    pub fn value(&self, idx: usize) -> Option<&Value> {
        self.values.get(idx)
    }

    fn index_of(&self, name: &str) -> Result<usize> {
        self.columns
            .iter()
            .position(|c| c == name)
            .ok_or_else(|| Error::new(ErrorKind::Decode, format!("there is no column {name}")))
    }

    /// Reads `row` (any driver's) into values, trying each covered type per column; `names`
    /// are the result's column names.
    ///
    /// # Errors
    /// [`ErrorKind::Decode`] for a column of a type the values do not cover.
    pub fn read<R>(row: &R, names: Arc<[String]>) -> Result<Self>
    where
        R: Column<Option<bool>>
            + Column<Option<i16>>
            + Column<Option<i32>>
            + Column<Option<i64>>
            + Column<Option<f32>>
            + Column<Option<f64>>
            + Column<Option<String>>
            + Column<Option<Vec<u8>>>,
    {
        let mut values = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            let v = if let Ok(v) = <R as Column<Option<i64>>>::column(row, i) {
                v.into()
            } else if let Ok(v) = <R as Column<Option<i32>>>::column(row, i) {
                v.into()
            } else if let Ok(v) = <R as Column<Option<String>>>::column(row, i) {
                v.into()
            } else if let Ok(v) = <R as Column<Option<bool>>>::column(row, i) {
                v.into()
            } else if let Ok(v) = <R as Column<Option<i16>>>::column(row, i) {
                v.into()
            } else if let Ok(v) = <R as Column<Option<f64>>>::column(row, i) {
                v.into()
            } else if let Ok(v) = <R as Column<Option<f32>>>::column(row, i) {
                v.into()
            } else if let Ok(v) = <R as Column<Option<Vec<u8>>>>::column(row, i) {
                v.into()
            } else {
                return Err(Error::new(
                    ErrorKind::Decode,
                    format!("column {name} has a type the driver-neutral values do not cover"),
                )
                .with_hint(format!(
                    "cast it in the query ({name}::text, or ::bigint / ::float8) or use the driver's own types"
                )));
            };
            values.push(v);
        }
        Ok(ValueRow {
            columns: names,
            values,
        })
    }
}

fn mismatch(v: &Value, want: &str) -> Error {
    Error::new(ErrorKind::Decode, format!("cannot read {v:?} as {want}"))
}

/// `i` as an `f64`, when it is exactly representable (|i| ≤ 2^53).
fn exact_f64(i: i64) -> Result<f64> {
    if i.unsigned_abs() <= 1 << 53 {
        Ok(i as f64)
    } else {
        Err(mismatch(&Value::Int(i), "f64 (not exactly representable)"))
    }
}

/// `f` as an `f32`, when it stays finite (precision beyond `f32`'s is rounded).
fn narrow_f32(f: f64) -> Result<f32> {
    let n = f as f32;
    if n.is_finite() || !f.is_finite() {
        Ok(n)
    } else {
        Err(mismatch(&Value::Float(f), "f32 (out of range)"))
    }
}

macro_rules! column_of {
    ($($t:ty: $($pat:pat => $e:expr),+);* $(;)?) => {
        $(
        impl Column<$t> for ValueRow {
            fn column(&self, idx: usize) -> Result<$t> {
                let v = self.values.get(idx).ok_or_else(|| {
                    Error::new(ErrorKind::Decode, format!("there is no column {idx}"))
                })?;
                match v {
                    $($pat => $e,)+
                    other => Err(mismatch(other, stringify!($t))),
                }
            }
            fn column_named(&self, name: &str) -> Result<$t> {
                self.column(self.index_of(name)?)
            }
        }
        impl Column<Option<$t>> for ValueRow {
            fn column(&self, idx: usize) -> Result<Option<$t>> {
                match self.values.get(idx) {
                    Some(Value::Null) => Ok(None),
                    _ => <Self as Column<$t>>::column(self, idx).map(Some),
                }
            }
            fn column_named(&self, name: &str) -> Result<Option<$t>> {
                <Self as Column<Option<$t>>>::column(self, self.index_of(name)?)
            }
        }
        )*
    };
}

column_of! {
    bool: Value::Bool(b) => Ok(*b);
    i64: Value::Int(i) => Ok(*i);
    i32: Value::Int(i) => i32::try_from(*i).map_err(|_| mismatch(&Value::Int(*i), "i32"));
    i16: Value::Int(i) => i16::try_from(*i).map_err(|_| mismatch(&Value::Int(*i), "i16"));
    f64: Value::Float(f) => Ok(*f), Value::Int(i) => exact_f64(*i);
    f32: Value::Float(f) => narrow_f32(*f), Value::Int(i) => exact_f64(*i).and_then(narrow_f32);
    String: Value::Text(s) => Ok(s.clone());
    Vec<u8>: Value::Bytes(b) => Ok(b.clone());
}

/// Statements with [`Value`] parameters and [`ValueRow`] results, on the driver's own
/// statement path (cache, timeouts, hooks). Every driver of this workspace implements it;
/// the driver registry needs it.
pub trait ValueQueries: Connection {
    /// Runs `sql` and collects every row as values.
    ///
    /// # Errors
    /// The server's error; [`ErrorKind::Decode`] for a column type the values do not cover;
    /// [`ErrorKind::Other`] for a parameter the driver cannot send as the type the server
    /// expects.
    fn query_values(
        &mut self,
        sql: &str,
        params: &[Value],
    ) -> impl Future<Output = Result<Vec<ValueRow>>> + Send;

    /// Runs `sql` and returns the number of rows it affected.
    ///
    /// # Errors
    /// As [`query_values`](ValueQueries::query_values).
    fn execute_values(
        &mut self,
        sql: &str,
        params: &[Value],
    ) -> impl Future<Output = Result<u64>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(values: Vec<Value>) -> ValueRow {
        let names: Vec<String> = (0..values.len()).map(|i| format!("c{i}")).collect();
        ValueRow::new(names.into(), values)
    }

    #[test]
    fn values_convert_and_read_back() {
        let r = row(vec![
            Value::from(true),
            Value::from(5_i32),
            Value::from(2.5_f32),
            Value::from("x"),
            Value::from(vec![1_u8]),
            Value::from(None::<i64>),
            Value::from(70_000_i64),
        ]);
        assert!(<ValueRow as Column<bool>>::column(&r, 0).unwrap());
        assert_eq!(<ValueRow as Column<i16>>::column(&r, 1).unwrap(), 5);
        assert_eq!(<ValueRow as Column<f64>>::column(&r, 2).unwrap(), 2.5);
        assert_eq!(<ValueRow as Column<f64>>::column(&r, 1).unwrap(), 5.0);
        assert_eq!(
            <ValueRow as Column<String>>::column_named(&r, "c3").unwrap(),
            "x"
        );
        assert_eq!(
            <ValueRow as Column<Vec<u8>>>::column(&r, 4).unwrap(),
            vec![1]
        );
        assert_eq!(
            <ValueRow as Column<Option<i64>>>::column(&r, 5).unwrap(),
            None
        );
        assert_eq!(
            <ValueRow as Column<Option<i64>>>::column_named(&r, "c1").unwrap(),
            Some(5)
        );
        assert!(
            <ValueRow as Column<i16>>::column(&r, 6).is_err(),
            "out of range"
        );
        assert!(
            <ValueRow as Column<i64>>::column(&r, 5).is_err(),
            "NULL as i64"
        );
        assert!(<ValueRow as Column<String>>::column(&r, 1).is_err());
        assert!(<ValueRow as Column<bool>>::column(&r, 9).is_err());
        assert!(<ValueRow as Column<bool>>::column_named(&r, "nope").is_err());
        let big = row(vec![Value::Int((1 << 53) + 1), Value::Float(1e300)]);
        assert!(
            <ValueRow as Column<f64>>::column(&big, 0).is_err(),
            "inexact"
        );
        assert!(
            <ValueRow as Column<f32>>::column(&big, 1).is_err(),
            "out of f32's range"
        );
        assert_eq!(<ValueRow as Column<f32>>::column(&r, 1).unwrap(), 5.0);
        assert_eq!(r.columns().len(), 7);
        assert_eq!(r.value(3), Some(&Value::Text("x".into())));
        assert_eq!(r.values().len(), 7);
    }

    #[test]
    fn reading_a_row_tries_each_covered_type() {
        let src = row(vec![
            Value::Int(1),
            Value::Text("a".into()),
            Value::Null,
            Value::Bool(false),
            Value::Float(0.5),
            Value::Bytes(vec![2]),
        ]);
        let read = ValueRow::read(&src, src.columns.clone()).unwrap();
        assert_eq!(read.values()[..2], [Value::Int(1), Value::Text("a".into())]);
        assert_eq!(read.values()[2], Value::Null);
        assert_eq!(
            read.values()[3..],
            [Value::Bool(false), Value::Float(0.5), Value::Bytes(vec![2])]
        );
        // A column none of the types read.
        struct Odd;
        macro_rules! refuse {
            ($($t:ty),*) => {$(
                impl Column<Option<$t>> for Odd {
                    fn column(&self, _: usize) -> Result<Option<$t>> { Err(Error::new(ErrorKind::Decode, "no")) }
                    fn column_named(&self, _: &str) -> Result<Option<$t>> { Err(Error::new(ErrorKind::Decode, "no")) }
                }
            )*};
        }
        refuse!(bool, i16, i32, i64, f32, f64, String, Vec<u8>);
        let e = ValueRow::read(&Odd, vec!["amount".to_string()].into()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Decode);
        assert!(e.hint().unwrap().contains("amount::text"), "{e}");
    }
}
