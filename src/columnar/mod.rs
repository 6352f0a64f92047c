//! Parquet files of ticks ([`tick`]) and bars ([`bar`]): the one home of their Arrow schemas,
//! so `storage export --format parquet` and `studies bars --format parquet` write the same
//! types (timestamps as `TIMESTAMP(ns, UTC)`, prices and sizes as `f64`) and pandas, polars
//! and pyarrow read them without conversion.
//!
//! A writer collects rows in Arrow builders and hands the parquet crate one record batch
//! per [`BATCH_ROWS`] rows, so memory stays bounded whatever the length of the export.

pub mod bar;
pub mod tick;

use std::io::Write;
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

/// Rows per record batch (and at most per row group is the parquet crate's own limit).
pub const BATCH_ROWS: usize = 64 * 1024;

/// Why writing a Parquet file failed.
#[derive(Debug, thiserror::Error)]
pub enum ColumnarError {
    /// The parquet crate refused or could not write.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// A batch did not fit its schema (a bug here, not bad input).
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
}

/// The type of every time column: nanoseconds since the Unix epoch, UTC.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some(Arc::from("UTC")))
}

/// A fixed-point value as `f64`: the nearest double to the decimal the CSV prints, since
/// both the value (below 2^53) and the scale are exact doubles and division rounds once.
pub fn fixed_f64(v: i64, scale: i64) -> f64 {
    v as f64 / scale as f64
}

/// Columns under construction for one schema.
pub trait Columns {
    /// Rows appended since the last [`Columns::finish`].
    fn len(&self) -> usize;
    /// Whether no row is pending.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The pending rows as arrays in schema order (the builders start empty again).
    fn finish(&mut self) -> Vec<ArrayRef>;
}

/// Rows of one schema into a Parquet file.
pub struct ParquetSink<W: Write + Send, C: Columns> {
    writer: ArrowWriter<W>,
    schema: SchemaRef,
    /// The builders; append rows through [`ParquetSink::columns`].
    columns: C,
}

impl<W: Write + Send, C: Columns> std::fmt::Debug for ParquetSink<W, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetSink")
            .field("schema", &self.schema)
            .field("pending", &self.columns.len())
            .finish()
    }
}

impl<W: Write + Send, C: Columns> ParquetSink<W, C> {
    /// A file of `schema` on `out`, Snappy-compressed.
    pub fn new(out: W, schema: SchemaRef, columns: C) -> Result<Self, ColumnarError> {
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_size(1024 * 1024)
            .build();
        Ok(ParquetSink {
            writer: ArrowWriter::try_new(out, schema.clone(), Some(props))?,
            schema,
            columns,
        })
    }

    /// The builders, to append rows to; call [`ParquetSink::flush_full`] after.
    pub fn columns(&mut self) -> &mut C {
        &mut self.columns
    }

    /// Hands a full batch to the writer.
    pub fn flush_full(&mut self) -> Result<(), ColumnarError> {
        if self.columns.len() >= BATCH_ROWS {
            self.write_batch()?;
        }
        Ok(())
    }

    fn write_batch(&mut self) -> Result<(), ColumnarError> {
        if self.columns.is_empty() {
            return Ok(());
        }
        let batch = RecordBatch::try_new(self.schema.clone(), self.columns.finish())?;
        self.writer.write(&batch)?;
        Ok(())
    }

    /// Writes what is pending and the file's footer; returns the output.
    pub fn close(mut self) -> Result<W, ColumnarError> {
        self.write_batch()?;
        Ok(self.writer.into_inner()?)
    }
}

/// Reading files back and comparing them with the CSV, for the tests of both schemas.
#[cfg(test)]
pub(crate) mod csv_check;
