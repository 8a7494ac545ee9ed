//! A Parquet output encoded column-parallel: the stream path's writer.
//!
//! The stream path's tail (the sorted merge, the rollup and the encoding of
//! the outputs) runs after the last input is read; the encoding was its
//! slowest stage, one thread encoding every column (issue 21: ~17% of a big
//! window's CPU, dictionary interning and zstd). This writer gathers one row
//! group's rows, then encodes its columns on `threads` threads at once (each
//! takes the next column not yet taken, costliest first) in the background
//! while the next row group gathers, and appends the column chunks in schema
//! order. The file is byte for byte what parquet's
//! `ArrowWriter` writes with the same properties and row group size (same
//! column writers, same row group boundaries; unit-tested), streamed to the
//! store in parts as each row group closes.

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType as ArrowType, SchemaRef};
use bytes::Bytes;
use parquet::arrow::arrow_writer::{compute_leaves, ArrowColumnChunk, ArrowColumnWriter, ArrowRowGroupWriterFactory};
use parquet::arrow::async_writer::AsyncFileWriter;
use parquet::arrow::ArrowWriter;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio_util::task::AbortOnDropHandle;

use r2o_common::Error;

/// One Parquet file being written to `W` (the store's multipart upload).
pub struct ParallelWriter<W: AsyncFileWriter> {
    file: SerializedFileWriter<Vec<u8>>,
    factory: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    /// Rows of the row group in progress, not yet encoded.
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    /// Rows per row group (the properties' `max_row_group_row_count`).
    row_group_rows: usize,
    /// Row groups whose encoding has started.
    started: usize,
    /// The row group being encoded, not yet appended.
    in_flight: Option<AbortOnDropHandle<Result<Vec<ArrowColumnChunk>, Error>>>,
    threads: usize,
    upload: W,
}

impl<W: AsyncFileWriter> ParallelWriter<W> {
    /// A writer of `schema`'s rows to `upload` with `props`, row groups of
    /// `row_group_rows` rows (the same as `props`' maximum), encoded on
    /// `threads` threads.
    ///
    /// # Errors
    /// A schema Parquet cannot hold.
    pub fn try_new(
        upload: W,
        schema: SchemaRef,
        props: WriterProperties,
        row_group_rows: usize,
        threads: usize,
    ) -> Result<ParallelWriter<W>, Error> {
        // the same file layout and metadata (the encoded Arrow schema) as ArrowWriter's
        let (file, factory) = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props))
            .and_then(ArrowWriter::into_serialized_writer)
            .map_err(Error::from)?;
        Ok(ParallelWriter {
            file,
            factory,
            schema,
            pending: vec![],
            pending_rows: 0,
            row_group_rows: row_group_rows.max(1),
            started: 0,
            in_flight: None,
            threads: threads.max(1),
            upload,
        })
    }

    /// Adds `batch`'s rows; each full row group is encoded and uploaded.
    ///
    /// # Errors
    /// Encoding and store errors.
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<(), Error> {
        let mut off = 0;
        while off < batch.num_rows() {
            let take = (self.row_group_rows - self.pending_rows).min(batch.num_rows() - off);
            self.pending.push(batch.slice(off, take));
            self.pending_rows += take;
            off += take;
            if self.pending_rows == self.row_group_rows {
                self.flush().await?;
            }
        }
        Ok(())
    }

    /// Starts encoding the rows gathered so far as one row group, in the
    /// background, and appends the row group started before it (so the
    /// encoding of one row group overlaps the gathering of the next).
    async fn flush(&mut self) -> Result<(), Error> {
        if self.pending_rows == 0 {
            return Ok(());
        }
        let batches = std::mem::take(&mut self.pending);
        self.pending_rows = 0;
        let writers = self.factory.create_column_writers(self.started).map_err(Error::from)?;
        self.started += 1;
        let mut jobs: Vec<Job> = writers
            .into_iter()
            .enumerate()
            .map(|(i, w)| Job { index: i, writer: w, leaves: vec![], rank: 0 })
            .collect();
        for batch in &batches {
            let mut leaf = 0;
            for (field, column) in self.schema.fields().iter().zip(batch.columns()) {
                for l in compute_leaves(field, column).map_err(Error::from)? {
                    jobs[leaf].leaves.push(l);
                    jobs[leaf].rank = cost_rank(field.data_type());
                    leaf += 1;
                }
            }
        }
        drop(batches);
        let next = AbortOnDropHandle::new(tokio::spawn(encode_row_group(jobs, self.threads)));
        match self.in_flight.replace(next) {
            Some(before) => self.append(before).await,
            None => Ok(()),
        }
    }

    /// Appends an encoded row group to the file, and uploads it.
    async fn append(&mut self, encoding: AbortOnDropHandle<Result<Vec<ArrowColumnChunk>, Error>>) -> Result<(), Error> {
        let chunks = encoding.await.map_err(|e| Error::Segment {
            segment: String::new(),
            problem: format!("encoding an output stopped: {e}"),
        })??;
        let mut row_group = self.file.next_row_group().map_err(Error::from)?;
        for chunk in chunks {
            chunk.append_to_row_group(&mut row_group).map_err(Error::from)?;
        }
        row_group.close().map_err(Error::from)?;
        self.drain().await
    }

    /// Uploads what the file writer has written so far.
    async fn drain(&mut self) -> Result<(), Error> {
        self.file.flush().map_err(|e| Error::from(ParquetError::from(e)))?;
        let bytes = std::mem::take(self.file.inner_mut());
        if !bytes.is_empty() {
            self.upload.write(Bytes::from(bytes)).await.map_err(Error::from)?;
        }
        Ok(())
    }

    /// Encodes the last row group, writes the footer and completes the upload.
    ///
    /// # Errors
    /// Encoding and store errors.
    pub async fn close(mut self) -> Result<(), Error> {
        self.flush().await?;
        if let Some(last) = self.in_flight.take() {
            self.append(last).await?;
        }
        self.file.finish().map_err(Error::from)?;
        self.drain().await?;
        self.upload.complete().await.map_err(Error::from)
    }
}

/// One column chunk to encode: its position, its writer, its leaves, and
/// the rank of its cost ([`cost_rank`]).
struct Job {
    index: usize,
    writer: ArrowColumnWriter,
    leaves: Vec<parquet::arrow::arrow_writer::ArrowLeafColumn>,
    rank: u8,
}

/// Encodes a row group's column chunks on `threads` threads (each takes the
/// next column not yet taken, the costliest first, so the last one taken is
/// a cheap one); the chunks in schema order.
async fn encode_row_group(mut jobs: Vec<Job>, threads: usize) -> Result<Vec<ArrowColumnChunk>, Error> {
    jobs.sort_by_key(|j| std::cmp::Reverse(j.rank));
    let queue = Arc::new(Mutex::new(VecDeque::from(jobs)));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let queue = queue.clone();
            AbortOnDropHandle::new(tokio::task::spawn_blocking(move || encode_from(&queue)))
        })
        .collect();
    let mut chunks: Vec<(usize, ArrowColumnChunk)> = vec![];
    for w in workers {
        let done = w.await.map_err(|e| Error::Segment {
            segment: String::new(),
            problem: format!("encoding an output stopped: {e}"),
        })?;
        chunks.extend(done.map_err(Error::from)?);
    }
    chunks.sort_by_key(|(i, _)| *i);
    Ok(chunks.into_iter().map(|(_, c)| c).collect())
}

/// Encodes columns taken from `queue` until it is empty.
fn encode_from(queue: &Mutex<VecDeque<Job>>) -> Result<Vec<(usize, ArrowColumnChunk)>, ParquetError> {
    let mut done = vec![];
    loop {
        let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
        let Some(mut job) = next else { return Ok(done) };
        for leaf in &job.leaves {
            job.writer.write(leaf)?;
        }
        drop(job.leaves);
        done.push((job.index, job.writer.close()?));
    }
}

/// A rough rank of a column's encoding cost: strings (dictionary interning)
/// above wide values above narrow ones.
fn cost_rank(t: &ArrowType) -> u8 {
    match t {
        ArrowType::Utf8 | ArrowType::LargeUtf8 | ArrowType::Binary | ArrowType::LargeBinary => 3,
        t if t.primitive_width().is_some_and(|w| w >= 8) => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Float64Array, Int32Array, Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use futures::future::BoxFuture;
    use futures::FutureExt;

    /// An upload into memory.
    #[derive(Clone, Default)]
    struct Mem(Arc<Mutex<Vec<u8>>>, Arc<Mutex<bool>>);

    impl AsyncFileWriter for Mem {
        fn write(&mut self, bs: Bytes) -> BoxFuture<'_, parquet::errors::Result<()>> {
            self.0.lock().unwrap().extend_from_slice(&bs);
            async { Ok(()) }.boxed()
        }
        fn complete(&mut self) -> BoxFuture<'_, parquet::errors::Result<()>> {
            *self.1.lock().unwrap() = true;
            async { Ok(()) }.boxed()
        }
    }

    fn batches(schema: &SchemaRef) -> Vec<RecordBatch> {
        (0..7)
            .map(|b| {
                let n = 1000 + 37 * b;
                let names: StringArray =
                    (0..n).map(|i| if i % 11 == 0 { None } else { Some(format!("c{}", (i * 7 + b) % 23)) }).collect();
                let ints: Int32Array = (0..n).map(|i| Some(i * b)).collect();
                let longs: Int64Array =
                    (0..n).map(|i| if i % 5 == 0 { None } else { Some(i as i64 * 1_000) }).collect();
                let floats: Float64Array = (0..n).map(|i| Some(i as f64 / 3.0)).collect();
                let cols: Vec<ArrayRef> = vec![Arc::new(names), Arc::new(ints), Arc::new(longs), Arc::new(floats)];
                RecordBatch::try_new(schema.clone(), cols).unwrap()
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_file_is_byte_for_byte_what_arrow_writer_writes() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("s", ArrowType::Utf8, true),
            Field::new("i", ArrowType::Int32, false),
            Field::new("l", ArrowType::Int64, true),
            Field::new("d", ArrowType::Float64, false),
        ]));
        for (row_group_rows, threads) in [(1500, 2), (100_000, 3), (512, 1)] {
            let props = r2o_common::columnar::writer_properties(row_group_rows).unwrap();
            let mut expected = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props.clone())).unwrap();
            for b in batches(&schema) {
                expected.write(&b).unwrap();
            }
            let expected = expected.into_inner().unwrap();
            let mem = Mem::default();
            let mut w = ParallelWriter::try_new(mem.clone(), schema.clone(), props, row_group_rows, threads).unwrap();
            for b in batches(&schema) {
                w.write(&b).await.unwrap();
            }
            w.close().await.unwrap();
            assert!(*mem.1.lock().unwrap(), "the upload was completed");
            let got = mem.0.lock().unwrap().clone();
            assert_eq!(got.len(), expected.len(), "row groups of {row_group_rows} rows on {threads} threads");
            assert!(got == expected, "row groups of {row_group_rows} rows on {threads} threads: bytes differ");
        }
    }
}
