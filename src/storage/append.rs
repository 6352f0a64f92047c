//! An append-only file written in flush windows that are all or nothing.
//!
//! Bytes are staged in memory ([`AppendFile::stage`]) and written at their final offset by
//! [`AppendFile::flush`] (positional writes, so a failed write never moves a cursor). The
//! length at the start of the current window is remembered; [`AppendFile::rollback`] truncates
//! the file back to it after an error, so a file never keeps half of a failed window, and
//! [`AppendFile::commit_window`] makes the written bytes the new base.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// One append-only file.
#[derive(Debug)]
pub struct AppendFile {
    path: PathBuf,
    file: File,
    /// Bytes on disk that were written successfully.
    written: u64,
    /// `written` at the start of the current window.
    window_base: u64,
    staged: Vec<u8>,
    /// Written since the last sync.
    dirty: bool,
    /// Created by us and its directory entry not yet synced.
    new_entry: bool,
}

impl AppendFile {
    /// Opens `path` for appending at its current end, creating it (and its directory) when
    /// missing. Returns the file and whether it was created.
    pub fn open(path: &Path) -> std::io::Result<(AppendFile, bool)> {
        // 0600 in 0700 directories, tightened when older and looser (see private_fs).
        let (file, created) = super::private_fs::open_private_rw(path)?;
        let len = file.metadata()?.len();
        Ok((
            AppendFile {
                path: path.to_path_buf(),
                file,
                written: len,
                window_base: len,
                staged: Vec::with_capacity(if created { 4096 } else { 0 }),
                dirty: created,
                new_entry: created,
            },
            created,
        ))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written successfully (not counting staged ones).
    pub fn written_len(&self) -> u64 {
        self.written
    }

    /// Bytes written plus staged: the length after the next successful flush.
    pub fn logical_len(&self) -> u64 {
        self.written + self.staged.len() as u64
    }

    /// The staged bytes' buffer, to append to.
    pub fn stage(&mut self) -> &mut Vec<u8> {
        &mut self.staged
    }

    /// Bytes staged and not yet written.
    pub fn staged_len(&self) -> usize {
        self.staged.len()
    }

    /// Writes the staged bytes at the end of the file. On error nothing is staged any more
    /// and the file may hold part of them until [`AppendFile::rollback`].
    pub fn flush(&mut self) -> std::io::Result<()> {
        if self.staged.is_empty() {
            return Ok(());
        }
        let res = self.file.write_all_at(&self.staged, self.written);
        let n = self.staged.len() as u64;
        self.staged.clear();
        res?;
        self.written += n;
        self.dirty = true;
        Ok(())
    }

    /// `fdatasync` when something was written since the last sync; for a file this writer
    /// created, also its directory and the four above it (`HH`, `DD`, `MM`, `YYYY`, the
    /// format's; any of them may be new), so that the file itself survives a power loss.
    pub fn sync(&mut self) -> std::io::Result<()> {
        if self.dirty {
            self.file.sync_data()?;
            self.dirty = false;
        }
        if self.new_entry {
            for dir in self.path.ancestors().skip(1).take(5) {
                File::open(dir)?.sync_all()?;
            }
            self.new_entry = false;
        }
        Ok(())
    }

    /// Makes everything written so far the base of the next window.
    pub fn commit_window(&mut self) {
        self.window_base = self.written;
    }

    /// The length the file has to be cut back to by a rollback.
    pub fn window_base(&self) -> u64 {
        self.window_base
    }

    /// Drops staged bytes and truncates the file to the start of the window.
    pub fn rollback(&mut self) -> std::io::Result<()> {
        self.staged.clear();
        self.file.set_len(self.window_base)?;
        self.written = self.window_base;
        Ok(())
    }

    /// Reads `len` bytes at `offset` (for rebuilding state when reopening).
    pub fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    /// Truncates the file to `len` right now (repairing a torn tail before appending).
    pub fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        self.staged.clear();
        self.file.set_len(len)?;
        self.written = len;
        self.window_base = len;
        Ok(())
    }
}
