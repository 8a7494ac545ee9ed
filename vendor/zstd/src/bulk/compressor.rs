use crate::map_error_code;

use std::io;
use zstd_safe;

/// Allows to compress independently multiple chunks of data.
///
/// Each job will be processed entirely in-memory without streaming, so this
/// is most fitting for many small jobs. To compress larger volume that don't
/// easily fit in memory, a streaming compression may be more appropriate.
///
/// It is more efficient than a streaming compressor for 2 reasons:
/// * It re-uses the zstd context between jobs to avoid re-allocations
/// * It avoids copying data from a `Read` into a temporary buffer before compression.
///
/// r2o patch: the context is created on first use, not by `new` (zstd runs
/// `cpuid` at every context creation, a VM exit on virtual machines, and
/// parquet-rs builds a compressor for every column chunk it reads or
/// writes), and a context without a dictionary is taken from (and given
/// back to, reset) a small per-thread pool, so writing many column chunks
/// creates a few contexts, not one each.
#[derive(Default)]
pub struct Compressor<'a> {
    /// A context of its own: one with a dictionary (which may be borrowed),
    /// or one handed out by `context_mut`. Never pooled.
    context: Option<zstd_safe::CCtx<'a>>,
    /// A context of the per-thread pool, given back on drop.
    pooled: Option<zstd_safe::CCtx<'static>>,
    /// Compression level to set when the context is taken.
    level: Option<i32>,
}

/// r2o patch: most contexts one thread keeps for reuse. A context keeps the
/// workspace of its largest job (about 1 MiB at level 3 for a 1 MiB page);
/// a Parquet writer holds one per column chunk of a row group at once.
const POOL_MAX: usize = 16;

std::thread_local! {
    /// r2o patch: reset contexts ready for reuse on this thread.
    static POOL: std::cell::RefCell<Vec<zstd_safe::CCtx<'static>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

fn pool_take() -> zstd_safe::CCtx<'static> {
    POOL.try_with(|p| p.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_default()
}

fn pool_give(mut c: zstd_safe::CCtx<'static>) {
    // a reset context holds no dictionary and default parameters
    if c.reset(zstd_safe::ResetDirective::SessionAndParameters).is_ok() {
        let _ = POOL.try_with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOL_MAX {
                p.push(c);
            }
        });
    }
}

impl Drop for Compressor<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.pooled.take() {
            pool_give(c);
        }
    }
}

impl Compressor<'static> {
    /// Creates a new zstd compressor
    pub fn new(level: i32) -> io::Result<Self> {
        Self::with_dictionary(level, &[])
    }

    /// Creates a new zstd compressor, using the given dictionary.
    ///
    /// Note that using a dictionary means that decompression will need to use
    /// the same dictionary.
    pub fn with_dictionary(level: i32, dictionary: &[u8]) -> io::Result<Self> {
        let mut compressor = Self::default();

        compressor.set_dictionary(level, dictionary)?;

        Ok(compressor)
    }
}

impl<'a> Compressor<'a> {
    /// Creates a new compressor using an existing `EncoderDictionary`.
    ///
    /// The compression level will be the one specified when creating the dictionary.
    ///
    /// Note that using a dictionary means that decompression will need to use
    /// the same dictionary.
    pub fn with_prepared_dictionary<'b>(
        dictionary: &'a crate::dict::EncoderDictionary<'b>,
    ) -> io::Result<Self>
    where
        'b: 'a,
    {
        let mut compressor = Self::default();

        compressor.set_prepared_dictionary(dictionary)?;

        Ok(compressor)
    }

    /// Changes the compression level used by this compressor.
    ///
    /// *This will clear any dictionary previously registered.*
    ///
    /// If you want to keep the existing dictionary, you will need to pass it again to
    /// `Self::set_dictionary` instead of using this method.
    pub fn set_compression_level(&mut self, level: i32) -> io::Result<()> {
        self.set_dictionary(level, &[])
    }

    /// Changes the dictionary and compression level used by this compressor.
    ///
    /// Will affect future compression jobs.
    ///
    /// Note that using a dictionary means that decompression will need to use
    /// the same dictionary.
    pub fn set_dictionary(
        &mut self,
        level: i32,
        dictionary: &[u8],
    ) -> io::Result<()> {
        if self.context.is_none() && dictionary.is_empty() {
            // r2o patch: a pooled context has no dictionary; without one
            // yet, the level is set when it is taken
            return match self.pooled.as_mut() {
                None => {
                    self.level = Some(level);
                    Ok(())
                }
                Some(c) => c
                    .set_parameter(zstd_safe::CParameter::CompressionLevel(
                        level,
                    ))
                    .map(drop)
                    .map_err(map_error_code),
            };
        }
        self.own_ctx()?
            .set_parameter(zstd_safe::CParameter::CompressionLevel(level))
            .map_err(map_error_code)?;

        self.own_ctx()?
            .load_dictionary(dictionary)
            .map_err(map_error_code)?;

        Ok(())
    }

    /// Changes the dictionary used by this compressor.
    ///
    /// The compression level used when preparing the dictionary will be used.
    ///
    /// Note that using a dictionary means that decompression will need to use
    /// the same dictionary.
    pub fn set_prepared_dictionary<'b>(
        &mut self,
        dictionary: &'a crate::dict::EncoderDictionary<'b>,
    ) -> io::Result<()>
    where
        'b: 'a,
    {
        self.own_ctx()?
            .ref_cdict(dictionary.as_cdict())
            .map_err(map_error_code)?;

        Ok(())
    }

    /// Compress a single block of data to the given destination buffer.
    ///
    /// Returns the number of bytes written, or an error if something happened
    /// (for instance if the destination buffer was too small). A failed job
    /// is abandoned, and the compressor can be set up again for the next one.
    /// With worker threads (see `multithread`), abandoning a job waits for
    /// them to be done with it.
    ///
    /// A level of `0` uses zstd's default (currently `3`).
    pub fn compress_to_buffer<C: zstd_safe::WriteBuf + ?Sized>(
        &mut self,
        source: &[u8],
        destination: &mut C,
    ) -> io::Result<usize> {
        let result = self.with_ctx(|ctx| {
            let result = ctx.compress2(destination, source);
            if result.is_err() {
                // `compress2` leaves a failed frame open, and zstd refuses
                // most setters mid-frame. Abandon it, so the compressor can
                // be set up for the next job. Resetting only the session
                // cannot fail (it waits for the worker threads, if any).
                let _ = ctx.reset(zstd_safe::ResetDirective::SessionOnly);
            }
            result
        })?;
        result.map_err(map_error_code)
    }

    /// Compresses a block of data and returns the compressed result.
    ///
    /// A level of `0` uses zstd's default (currently `3`).
    pub fn compress(&mut self, data: &[u8]) -> io::Result<Vec<u8>> {
        // We allocate a big buffer, slightly larger than the input data.
        let buffer_len = zstd_safe::compress_bound(data.len());
        let mut buffer = Vec::with_capacity(buffer_len);

        self.compress_to_buffer(data, &mut buffer)?;

        // Should we shrink the vec? Meh, let the user do it if he wants.
        Ok(buffer)
    }

    /// Gives mutable access to the internal context.
    ///
    /// # Panics
    /// r2o patch: when the context is created here and zstd refuses the
    /// compression level given before.
    pub fn context_mut(&mut self) -> &mut zstd_safe::CCtx<'a> {
        self.own_ctx().expect("zstd accepts the compression level")
    }

    /// r2o patch: a context from the pool (or a new one) with the pending
    /// level set; the level stays pending when zstd refuses it.
    fn taken(&mut self) -> io::Result<zstd_safe::CCtx<'static>> {
        let mut c = self.pooled.take().unwrap_or_else(pool_take);
        if let Some(level) = self.level {
            if let Err(e) = c.set_parameter(
                zstd_safe::CParameter::CompressionLevel(level),
            ) {
                pool_give(c);
                return Err(map_error_code(e));
            }
            self.level = None;
        }
        Ok(c)
    }

    /// r2o patch: the compressor's own context (never pooled: it may get a
    /// dictionary, or be handed out), made from the pooled one if any.
    fn own_ctx(&mut self) -> io::Result<&mut zstd_safe::CCtx<'a>> {
        if self.context.is_none() {
            self.context = Some(self.taken()?);
        }
        Ok(self.context.as_mut().expect("set above"))
    }

    /// r2o patch: runs `f` on the context: the compressor's own when it has
    /// one, else one of the pool (taken on first use).
    fn with_ctx<R>(
        &mut self,
        f: impl for<'x> FnOnce(&mut zstd_safe::CCtx<'x>) -> R,
    ) -> io::Result<R> {
        if let Some(c) = self.context.as_mut() {
            return Ok(f(c));
        }
        if self.pooled.is_none() {
            self.pooled = Some(self.taken()?);
        }
        Ok(f(self.pooled.as_mut().expect("set above")))
    }

    /// Sets a compression parameter for this compressor.
    pub fn set_parameter(
        &mut self,
        parameter: zstd_safe::CParameter,
    ) -> io::Result<()> {
        self.with_ctx(|c| c.set_parameter(parameter))?
            .map_err(map_error_code)?;
        Ok(())
    }

    /// Sets the expected size of the input.
    ///
    /// This affects the compression effectiveness.
    ///
    /// It is an error to give an incorrect size (an error will be returned when closing the
    /// stream if the size does not match what was pledged).
    ///
    /// Giving a `None` size means the size is unknown (this is the default).
    pub fn set_pledged_src_size(
        &mut self,
        size: Option<u64>,
    ) -> io::Result<()> {
        self.with_ctx(|c| c.set_pledged_src_size(size))?
            .map_err(map_error_code)?;
        Ok(())
    }

    crate::encoder_parameters!();
}

fn _assert_traits() {
    fn _assert_send<T: Send>(_: T) {}

    _assert_send(Compressor::new(0));
}
