//! The few places where SQLite and PostgreSQL SQL differ: casts on the way in and
//! out for dates, JSON and timestamps. Placeholders are `$N` on both.

use syncflow_core::Storage;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// Storage of the bookkeeping timestamp columns, which are not entity fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Col {
    Field(Storage),
    Timestamp,
}

impl Dialect {
    /// Expression that reads column `name` as text or integer.
    pub(crate) fn select(self, name: &str, col: Col) -> String {
        match (self, col) {
            (Dialect::Sqlite, _) | (Dialect::Postgres, Col::Field(Storage::Text | Storage::Integer)) => {
                name.to_string()
            }
            (Dialect::Postgres, Col::Field(Storage::Date | Storage::Json)) => {
                format!("{name}::text")
            }
            (Dialect::Postgres, Col::Timestamp) => format!("syncflow_ts({name})"),
        }
    }

    /// Placeholder `$n`, cast to the column's type where the driver sends text.
    pub(crate) fn param(self, n: usize, col: Col) -> String {
        match (self, col) {
            (Dialect::Postgres, Col::Field(Storage::Date)) => format!("${n}::date"),
            (Dialect::Postgres, Col::Field(Storage::Json)) => format!("${n}::jsonb"),
            (Dialect::Postgres, Col::Timestamp) => format!("${n}::timestamptz"),
            _ => format!("${n}"),
        }
    }
}
