use crate::map_error_code;

#[cfg(feature = "experimental")]
use std::convert::TryInto;
use std::io;
use zstd_safe;

/// Allows to decompress independently multiple blocks of data.
///
/// This reduces memory usage compared to calling `decompress` multiple times.
///
/// r2o patch: the context is created on first use, not by `new` (zstd runs
/// `cpuid` at every context creation, a VM exit on virtual machines, and
/// parquet-rs builds a decompressor for every column chunk it only writes),
/// and it is taken from (and given back to, reset) a small per-thread pool,
/// so reading many column chunks creates a few contexts, not one each.
#[derive(Default)]
pub struct Decompressor<'a> {
    /// A context that may borrow a prepared dictionary (never pooled).
    context: Option<zstd_safe::DCtx<'a>>,
    /// A context of the per-thread pool, given back on drop.
    pooled: Option<zstd_safe::DCtx<'static>>,
}

/// r2o patch: most contexts one thread keeps for reuse (about 100 KiB
/// each; a Parquet reader holds one per column chunk of a row group at once).
const POOL_MAX: usize = 32;

std::thread_local! {
    /// r2o patch: reset contexts ready for reuse on this thread.
    static POOL: std::cell::RefCell<Vec<zstd_safe::DCtx<'static>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

fn pool_take() -> zstd_safe::DCtx<'static> {
    POOL.try_with(|p| p.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_default()
}

impl Drop for Decompressor<'_> {
    fn drop(&mut self) {
        if let Some(mut c) = self.pooled.take() {
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
    }
}

impl Decompressor<'static> {
    /// Creates a new zstd decompressor.
    pub fn new() -> io::Result<Self> {
        Self::with_dictionary(&[])
    }

    /// Creates a new zstd decompressor, using the given dictionary.
    pub fn with_dictionary(dictionary: &[u8]) -> io::Result<Self> {
        let mut decompressor = Self::default();

        decompressor.set_dictionary(dictionary)?;

        Ok(decompressor)
    }
}

impl<'a> Decompressor<'a> {
    /// Creates a new decompressor using an existing `DecoderDictionary`.
    ///
    /// Note that using a dictionary means that compression will need to use
    /// the same dictionary.
    pub fn with_prepared_dictionary<'b>(
        dictionary: &'a crate::dict::DecoderDictionary<'b>,
    ) -> io::Result<Self>
    where
        'b: 'a,
    {
        let mut decompressor = Self::default();

        decompressor.set_prepared_dictionary(dictionary)?;

        Ok(decompressor)
    }

    /// Changes the dictionary used by this decompressor.
    ///
    /// Will affect future compression jobs.
    ///
    /// Note that using a dictionary means that compression will need to use
    /// the same dictionary.
    pub fn set_dictionary(&mut self, dictionary: &[u8]) -> io::Result<()> {
        if self.context.is_none() && self.pooled.is_none() && dictionary.is_empty() {
            return Ok(()); // r2o patch: a fresh context has no dictionary
        }
        self.with_ctx(|c| c.load_dictionary(dictionary))
            .map_err(map_error_code)?;

        Ok(())
    }

    /// Changes the dictionary used by this decompressor.
    ///
    /// Note that using a dictionary means that compression will need to use
    /// the same dictionary.
    pub fn set_prepared_dictionary<'b>(
        &mut self,
        dictionary: &'a crate::dict::DecoderDictionary<'b>,
    ) -> io::Result<()>
    where
        'b: 'a,
    {
        // r2o patch: a context borrowing a dictionary is never pooled
        if self.context.is_none() {
            let c: zstd_safe::DCtx<'a> =
                self.pooled.take().unwrap_or_else(pool_take);
            self.context = Some(c);
        }
        self.context
            .as_mut()
            .expect("set above")
            .ref_ddict(dictionary.as_ddict())
            .map_err(map_error_code)?;

        Ok(())
    }

    /// Deompress a single block of data to the given destination buffer.
    ///
    /// Returns the number of bytes written, or an error if something happened
    /// (for instance if the destination buffer was too small).
    pub fn decompress_to_buffer<C: zstd_safe::WriteBuf + ?Sized>(
        &mut self,
        source: &[u8],
        destination: &mut C,
    ) -> io::Result<usize> {
        self.with_ctx(|c| c.decompress(destination, source))
            .map_err(map_error_code)
    }

    /// Decompress a block of data, and return the result in a `Vec<u8>`.
    ///
    /// The decompressed data should be at most `capacity` bytes,
    /// or an error will be returned.
    pub fn decompress(
        &mut self,
        data: &[u8],
        capacity: usize,
    ) -> io::Result<Vec<u8>> {
        let capacity =
            Self::upper_bound(data).unwrap_or(capacity).min(capacity);
        let mut buffer = Vec::with_capacity(capacity);
        self.decompress_to_buffer(data, &mut buffer)?;
        Ok(buffer)
    }

    /// Sets a decompression parameter for this decompressor.
    pub fn set_parameter(
        &mut self,
        parameter: zstd_safe::DParameter,
    ) -> io::Result<()> {
        self.with_ctx(|c| c.set_parameter(parameter))
            .map_err(map_error_code)?;
        Ok(())
    }

    /// r2o patch: runs `f` on the context: the borrowing one when a
    /// prepared dictionary was set, else one of the pool (taken on first use).
    fn with_ctx<R>(
        &mut self,
        f: impl for<'x> FnOnce(&mut zstd_safe::DCtx<'x>) -> R,
    ) -> R {
        match self.context.as_mut() {
            Some(c) => f(c),
            None => f(self.pooled.get_or_insert_with(pool_take)),
        }
    }

    crate::decoder_parameters!();

    /// Get an upper bound on the decompressed size of data, if available
    ///
    /// This can be used to pre-allocate enough capacity for `decompress_to_buffer`
    /// and is used by `decompress` to ensure that it does not over-allocate if
    /// you supply a large `capacity`.
    ///
    /// Will return `None` if the upper bound cannot be determined or is larger than `usize::MAX`
    ///
    /// Note that unless the `experimental` feature is enabled, this will always return `None`.
    pub fn upper_bound(_data: &[u8]) -> Option<usize> {
        #[cfg(feature = "experimental")]
        {
            let bound = zstd_safe::decompress_bound(_data).ok()?;
            bound.try_into().ok()
        }
        #[cfg(not(feature = "experimental"))]
        {
            None
        }
    }
}

fn _assert_traits() {
    fn _assert_send<T: Send>(_: T) {}

    _assert_send(Decompressor::new());
}
