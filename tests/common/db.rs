//! The tests' one way into a gateway's database, on either backend pair.
//!
//! [`Db`] is a connection to the gateway's own database: Postgres on the production pair, the
//! SQLite file on the embedded one. [`Db::query`] runs SQL with typed [`Bind`]s and gives back
//! [`Row`]s of [`Cell`]s decoded the same way on both, so most SQL is written once:
//!
//! - placeholders are `$1`, `$2`, … on both (SQLite reads `$N` as the N-th parameter);
//! - a UUID is bound with [`Bind::Uuid`] (Postgres `uuid`, SQLite's lower-case TEXT) and read
//!   with [`Row::uuid`];
//! - a time comes back as a [`DateTime<Utc>`] from [`Row::time`], whether Postgres sent a
//!   `timestamptz` or SQLite holds RFC 3339 TEXT;
//! - an `inet` comes back as the bare address (what Postgres's `host()` gives, and what SQLite
//!   stores), JSON as a [`serde_json::Value`] from [`Row::json`], booleans from [`Row::bool`].
//!
//! SQL that cannot be shared (catalog queries, `::text` casts, `jsonb` operators, `now()`) is
//! written twice and chosen with [`super::on_pair`].

use std::fmt;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{Column as _, Row as _, TypeInfo as _, ValueRef as _};
use uuid::Uuid;

/// The fixed-width text form the SQLite schema stores times in (see `migrations/sqlite/`).
pub fn sqlite_time(at: &DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// A parameter of a query, typed so each backend gets its own form of it.
#[derive(Debug, Clone)]
pub enum Bind {
    Text(Option<String>),
    Int(Option<i64>),
    Uuid(Option<Uuid>),
    Time(Option<DateTime<Utc>>),
    Bool(Option<bool>),
}

impl From<&str> for Bind {
    fn from(value: &str) -> Self {
        Bind::Text(Some(value.to_string()))
    }
}

impl From<String> for Bind {
    fn from(value: String) -> Self {
        Bind::Text(Some(value))
    }
}

impl From<&String> for Bind {
    fn from(value: &String) -> Self {
        Bind::Text(Some(value.clone()))
    }
}

impl From<Option<&str>> for Bind {
    fn from(value: Option<&str>) -> Self {
        Bind::Text(value.map(str::to_string))
    }
}

impl From<i64> for Bind {
    fn from(value: i64) -> Self {
        Bind::Int(Some(value))
    }
}

impl From<i32> for Bind {
    fn from(value: i32) -> Self {
        Bind::Int(Some(i64::from(value)))
    }
}

impl From<bool> for Bind {
    fn from(value: bool) -> Self {
        Bind::Bool(Some(value))
    }
}

impl From<Uuid> for Bind {
    fn from(value: Uuid) -> Self {
        Bind::Uuid(Some(value))
    }
}

impl From<Option<Uuid>> for Bind {
    fn from(value: Option<Uuid>) -> Self {
        Bind::Uuid(value)
    }
}

impl From<DateTime<Utc>> for Bind {
    fn from(value: DateTime<Utc>) -> Self {
        Bind::Time(Some(value))
    }
}

/// A UUID parameter from its text form (panics if it is not one).
pub fn uuid_bind(id: &str) -> Bind {
    Bind::Uuid(Some(
        Uuid::parse_str(id).unwrap_or_else(|e| panic!("{id:?} is not a UUID: {e}")),
    ))
}

/// One value of a result row, decoded the same way on both backends.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Float(f64),
    /// Text; also a Postgres `uuid` (lower-case) and `inet` (the bare address).
    Text(String),
    Bool(bool),
    /// A Postgres `timestamptz` (SQLite's times arrive as `Text`; [`Cell::time`] reads both).
    Time(DateTime<Utc>),
    /// A Postgres `json`/`jsonb` (SQLite's JSON arrives as `Text`; [`Cell::json`] reads both).
    Json(Value),
    Bytes(Vec<u8>),
}

impl Cell {
    pub fn is_null(&self) -> bool {
        matches!(self, Cell::Null)
    }

    /// The value as text (`None` for NULL); times in the SQLite schema's fixed-width form.
    pub fn text(&self) -> Option<String> {
        match self {
            Cell::Null => None,
            Cell::Int(i) => Some(i.to_string()),
            Cell::Float(f) => Some(f.to_string()),
            Cell::Text(s) => Some(s.clone()),
            Cell::Bool(b) => Some(b.to_string()),
            Cell::Time(t) => Some(sqlite_time(t)),
            Cell::Json(v) => Some(v.to_string()),
            Cell::Bytes(b) => Some(hex::encode(b)),
        }
    }

    pub fn int(&self) -> Option<i64> {
        match self {
            Cell::Null => None,
            Cell::Int(i) => Some(*i),
            Cell::Bool(b) => Some(i64::from(*b)),
            other => panic!("not an integer: {other:?}"),
        }
    }

    pub fn bool(&self) -> Option<bool> {
        match self {
            Cell::Null => None,
            Cell::Bool(b) => Some(*b),
            Cell::Int(0) => Some(false),
            Cell::Int(1) => Some(true),
            other => panic!("not a boolean: {other:?}"),
        }
    }

    pub fn time(&self) -> Option<DateTime<Utc>> {
        match self {
            Cell::Null => None,
            Cell::Time(t) => Some(*t),
            Cell::Text(s) => Some(
                s.parse()
                    .unwrap_or_else(|e| panic!("{s:?} is not an RFC 3339 time: {e}")),
            ),
            other => panic!("not a time: {other:?}"),
        }
    }

    pub fn uuid(&self) -> Option<Uuid> {
        match self {
            Cell::Null => None,
            Cell::Text(s) => {
                Some(Uuid::parse_str(s).unwrap_or_else(|e| panic!("{s:?} is not a UUID: {e}")))
            }
            other => panic!("not a UUID: {other:?}"),
        }
    }

    pub fn json(&self) -> Option<Value> {
        match self {
            Cell::Null => None,
            Cell::Json(v) => Some(v.clone()),
            Cell::Text(s) => {
                Some(serde_json::from_str(s).unwrap_or_else(|e| panic!("{s:?} is not JSON: {e}")))
            }
            other => panic!("not JSON: {other:?}"),
        }
    }

    /// The value as JSON, for dumps: times and bytes as text.
    pub fn to_json(&self) -> Value {
        match self {
            Cell::Null => Value::Null,
            Cell::Int(i) => Value::from(*i),
            Cell::Float(f) => Value::from(*f),
            Cell::Bool(b) => Value::from(*b),
            Cell::Json(v) => v.clone(),
            other => Value::from(other.text().unwrap_or_default()),
        }
    }
}

/// A column of a [`Row`], by position or by name.
pub trait Column: fmt::Debug {
    fn position(&self, row: &Row) -> Option<usize>;
}

impl Column for usize {
    fn position(&self, row: &Row) -> Option<usize> {
        (*self < row.cells.len()).then_some(*self)
    }
}

impl Column for str {
    fn position(&self, row: &Row) -> Option<usize> {
        row.columns.iter().position(|name| name == self)
    }
}

/// One result row. The typed getters panic on NULL (use the `opt_` ones where NULL is
/// possible) and on a value of another kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub columns: Vec<String>,
    pub cells: Vec<Cell>,
}

impl Row {
    pub fn cell(&self, column: impl Column) -> &Cell {
        let i = column
            .position(self)
            .unwrap_or_else(|| panic!("no column {column:?} in {self:?}"));
        &self.cells[i]
    }

    fn non_null<T>(&self, column: impl Column, value: Option<T>) -> T {
        value.unwrap_or_else(|| panic!("column {column:?} is NULL in {self:?}"))
    }

    pub fn opt_text(&self, column: impl Column) -> Option<String> {
        self.cell(column).text()
    }

    pub fn text(&self, column: impl Column) -> String {
        let value = self.opt_text(&column);
        self.non_null(column, value)
    }

    pub fn opt_int(&self, column: impl Column) -> Option<i64> {
        self.cell(column).int()
    }

    pub fn int(&self, column: impl Column) -> i64 {
        let value = self.opt_int(&column);
        self.non_null(column, value)
    }

    pub fn bool(&self, column: impl Column) -> bool {
        let value = self.cell(&column).bool();
        self.non_null(column, value)
    }

    pub fn opt_time(&self, column: impl Column) -> Option<DateTime<Utc>> {
        self.cell(column).time()
    }

    pub fn time(&self, column: impl Column) -> DateTime<Utc> {
        let value = self.opt_time(&column);
        self.non_null(column, value)
    }

    pub fn opt_uuid(&self, column: impl Column) -> Option<Uuid> {
        self.cell(column).uuid()
    }

    pub fn uuid(&self, column: impl Column) -> Uuid {
        let value = self.opt_uuid(&column);
        self.non_null(column, value)
    }

    pub fn opt_json(&self, column: impl Column) -> Option<Value> {
        self.cell(column).json()
    }

    pub fn json(&self, column: impl Column) -> Value {
        let value = self.opt_json(&column);
        self.non_null(column, value)
    }

    /// The row as a JSON object `{column: value}` (what a dump shows).
    pub fn to_json(&self) -> Value {
        Value::Object(
            self.columns
                .iter()
                .zip(&self.cells)
                .map(|(name, cell)| (name.clone(), cell.to_json()))
                .collect(),
        )
    }
}

impl<C: Column + ?Sized> Column for &C {
    fn position(&self, row: &Row) -> Option<usize> {
        (**self).position(row)
    }
}

/// A connection to one gateway's database.
pub enum Db {
    Postgres(sqlx::PgConnection),
    Sqlite(sqlx::SqliteConnection),
}

impl Db {
    /// Connects to `database_url`: `sqlite://PATH` (the file must exist) or a Postgres URL.
    pub async fn connect(database_url: &str) -> Db {
        match database_url.strip_prefix("sqlite://") {
            Some(path) => Db::Sqlite(connect_sqlite(Path::new(path)).await),
            None => Db::Postgres(super::connect_postgres(database_url).await),
        }
    }

    /// Runs `sql` (placeholders `$1`, `$2`, …) and returns every row; panics on an error.
    pub async fn query(&mut self, sql: &str, binds: &[Bind]) -> Vec<Row> {
        self.try_query(sql, binds)
            .await
            .unwrap_or_else(|e| panic!("query failed: {e}\nSQL: {sql}\nbinds: {binds:?}"))
    }

    /// [`Db::query`] for exactly one row.
    pub async fn query_one(&mut self, sql: &str, binds: &[Bind]) -> Row {
        let mut rows = self.query(sql, binds).await;
        assert_eq!(
            rows.len(),
            1,
            "want one row from {sql} ({binds:?}): {rows:?}"
        );
        rows.remove(0)
    }

    /// [`Db::query`] for at most one row.
    pub async fn query_opt(&mut self, sql: &str, binds: &[Bind]) -> Option<Row> {
        let mut rows = self.query(sql, binds).await;
        assert!(rows.len() <= 1, "want at most one row from {sql}: {rows:?}");
        rows.pop()
    }

    /// The integer in the first column of the one row `sql` returns (a `count(*)`).
    pub async fn count(&mut self, sql: &str, binds: &[Bind]) -> i64 {
        self.query_one(sql, binds).await.int(0)
    }

    /// Every value of the first column, as text.
    pub async fn texts(&mut self, sql: &str, binds: &[Bind]) -> Vec<String> {
        self.query(sql, binds)
            .await
            .into_iter()
            .map(|row| row.text(0))
            .collect()
    }

    pub async fn try_query(&mut self, sql: &str, binds: &[Bind]) -> Result<Vec<Row>, sqlx::Error> {
        match self {
            Db::Postgres(conn) => {
                let rows = postgres_query(sql, binds).fetch_all(&mut *conn).await?;
                Ok(rows.iter().map(postgres_row).collect())
            }
            Db::Sqlite(conn) => {
                let rows = sqlite_query(sql, binds).fetch_all(&mut *conn).await?;
                Ok(rows.iter().map(sqlite_row).collect())
            }
        }
    }

    /// Runs a statement; the number of rows it touched, or the database's refusal.
    pub async fn execute(&mut self, sql: &str, binds: &[Bind]) -> Result<u64, sqlx::Error> {
        match self {
            Db::Postgres(conn) => Ok(postgres_query(sql, binds)
                .execute(&mut *conn)
                .await?
                .rows_affected()),
            Db::Sqlite(conn) => Ok(sqlite_query(sql, binds)
                .execute(&mut *conn)
                .await?
                .rows_affected()),
        }
    }

    /// The names of the schema's own tables (no migration bookkeeping), sorted.
    pub async fn tables(&mut self) -> Vec<String> {
        let sql = match self {
            Db::Postgres(_) => {
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = 'public' AND table_type = 'BASE TABLE' \
                 AND table_name NOT LIKE '\\_sqlx%' ORDER BY 1"
            }
            Db::Sqlite(_) => {
                "SELECT name FROM sqlite_master WHERE type = 'table' \
                 AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
                 AND name NOT LIKE '\\_sqlx%' ESCAPE '\\' ORDER BY 1"
            }
        };
        self.texts(sql, &[]).await
    }

    /// Every row of every table (migration bookkeeping included), as `(table, JSON text)`.
    pub async fn dump(&mut self) -> Vec<(String, String)> {
        let mut tables = self.tables().await;
        tables.push("_sqlx_migrations".to_string());
        let mut out = Vec::new();
        for table in tables {
            let rows = match self {
                // row_to_json keeps Postgres's own text forms of every type.
                Db::Postgres(_) => {
                    self.texts(
                        &format!("SELECT row_to_json(t)::text FROM \"{table}\" t"),
                        &[],
                    )
                    .await
                }
                Db::Sqlite(_) => self
                    .query(&format!("SELECT * FROM \"{table}\""), &[])
                    .await
                    .iter()
                    .map(|row| row.to_json().to_string())
                    .collect(),
            };
            out.extend(rows.into_iter().map(|row| (table.clone(), row)));
        }
        out
    }
}

async fn connect_sqlite(path: &Path) -> sqlx::SqliteConnection {
    use sqlx::ConnectOptions as _;
    // The gateway made the file (WAL, its pragmas are kept in it) and holds the lock file
    // beside it; a test connection neither creates the file nor changes its journal mode,
    // and waits for the gateway's writers like another of its connections would.
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(false)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10));
    match tokio::time::timeout(Duration::from_secs(10), options.connect()).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => panic!(
            "cannot open the gateway's SQLite file {}: {e}",
            path.display()
        ),
        Err(_) => panic!(
            "cannot open the gateway's SQLite file {}: timed out",
            path.display()
        ),
    }
}

fn postgres_query<'q>(
    sql: &'q str,
    binds: &[Bind],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let mut query = sqlx::query(sql);
    for bind in binds {
        query = match bind.clone() {
            Bind::Text(v) => query.bind(v),
            Bind::Int(v) => query.bind(v),
            Bind::Uuid(v) => query.bind(v),
            Bind::Time(v) => query.bind(v),
            Bind::Bool(v) => query.bind(v),
        };
    }
    query
}

fn sqlite_query<'q>(
    sql: &'q str,
    binds: &[Bind],
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    let mut query = sqlx::query(sql);
    for bind in binds {
        // The SQLite schema's storage forms (migrations/sqlite/0001).
        query = match bind.clone() {
            Bind::Text(v) => query.bind(v),
            Bind::Int(v) => query.bind(v),
            Bind::Uuid(v) => query.bind(v.map(|id| id.hyphenated().to_string())),
            Bind::Time(v) => query.bind(v.as_ref().map(sqlite_time)),
            Bind::Bool(v) => query.bind(v.map(i64::from)),
        };
    }
    query
}

fn postgres_row(row: &sqlx::postgres::PgRow) -> Row {
    let columns = row.columns().iter().map(|c| c.name().to_string()).collect();
    let cells = (0..row.len()).map(|i| postgres_cell(row, i)).collect();
    Row { columns, cells }
}

fn postgres_cell(row: &sqlx::postgres::PgRow, i: usize) -> Cell {
    let raw = row.try_get_raw(i).expect("column in range");
    if raw.is_null() {
        return Cell::Null;
    }
    let type_name = raw.type_info().name().to_string();
    let fail = |e: sqlx::Error| -> Cell { panic!("column {i} ({type_name}): {e}") };
    match type_name.as_str() {
        "BOOL" => row.try_get(i).map(Cell::Bool).unwrap_or_else(fail),
        "INT2" => row
            .try_get::<i16, _>(i)
            .map(|v| Cell::Int(v.into()))
            .unwrap_or_else(fail),
        "INT4" => row
            .try_get::<i32, _>(i)
            .map(|v| Cell::Int(v.into()))
            .unwrap_or_else(fail),
        "INT8" => row.try_get(i).map(Cell::Int).unwrap_or_else(fail),
        "FLOAT4" => row
            .try_get::<f32, _>(i)
            .map(|v| Cell::Float(v.into()))
            .unwrap_or_else(fail),
        "FLOAT8" => row.try_get(i).map(Cell::Float).unwrap_or_else(fail),
        "UUID" => row
            .try_get::<Uuid, _>(i)
            .map(|v| Cell::Text(v.hyphenated().to_string()))
            .unwrap_or_else(fail),
        "TIMESTAMPTZ" => row.try_get(i).map(Cell::Time).unwrap_or_else(fail),
        "INET" | "CIDR" => row
            .try_get::<ipnet::IpNet, _>(i)
            .map(|net| {
                // An address is stored as a /32 (/128); show it as Postgres's host() does.
                Cell::Text(if net.prefix_len() == net.max_prefix_len() {
                    net.addr().to_string()
                } else {
                    net.to_string()
                })
            })
            .unwrap_or_else(fail),
        "JSON" | "JSONB" => row.try_get(i).map(Cell::Json).unwrap_or_else(fail),
        "BYTEA" => row.try_get(i).map(Cell::Bytes).unwrap_or_else(fail),
        // Text and the catalog's text-like domains (name, sql_identifier, …).
        _ => row
            .try_get_unchecked::<String, _>(i)
            .map(Cell::Text)
            .unwrap_or_else(fail),
    }
}

fn sqlite_row(row: &sqlx::sqlite::SqliteRow) -> Row {
    let columns = row.columns().iter().map(|c| c.name().to_string()).collect();
    let cells = (0..row.len()).map(|i| sqlite_cell(row, i)).collect();
    Row { columns, cells }
}

fn sqlite_cell(row: &sqlx::sqlite::SqliteRow, i: usize) -> Cell {
    let raw = row.try_get_raw(i).expect("column in range");
    if raw.is_null() {
        return Cell::Null;
    }
    // The value's own storage class (STRICT tables: the column's type).
    let type_name = raw.type_info().name().to_string();
    let fail = |e: sqlx::Error| -> Cell { panic!("column {i} ({type_name}): {e}") };
    match type_name.as_str() {
        "INTEGER" | "BOOLEAN" => row
            .try_get_unchecked::<i64, _>(i)
            .map(Cell::Int)
            .unwrap_or_else(fail),
        "REAL" => row
            .try_get_unchecked::<f64, _>(i)
            .map(Cell::Float)
            .unwrap_or_else(fail),
        "BLOB" => row
            .try_get_unchecked::<Vec<u8>, _>(i)
            .map(Cell::Bytes)
            .unwrap_or_else(fail),
        _ => row
            .try_get_unchecked::<String, _>(i)
            .map(Cell::Text)
            .unwrap_or_else(fail),
    }
}
