//! Retention: delete whole hours older than N days, never an hour in use.

use std::path::{Path, PathBuf};

use super::StorageError;
use super::layout::{Format, HOUR_NS, hour_dirs};

/// Deletes the hour directories of `format` under `root` that ended more than `days` days
/// before `now_ns`, except the hours in `in_use` (hour starts), and then the day, month and
/// year directories left empty. `days == 0` keeps everything. Returns the hours deleted;
/// an hour that cannot be deleted is reported in the error list and the rest go on.
pub fn expire(
    root: &Path,
    format: Format,
    days: u32,
    now_ns: i64,
    in_use: &[i64],
) -> Result<(Vec<PathBuf>, Vec<StorageError>), StorageError> {
    let mut removed = Vec::new();
    let mut errors = Vec::new();
    if days == 0 {
        return Ok((removed, errors));
    }
    let cutoff = now_ns - i64::from(days) * 24 * HOUR_NS;
    for (h, dir) in hour_dirs(root, format)? {
        if h + HOUR_NS > cutoff || in_use.contains(&h) {
            continue;
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {
                let mut p = dir.parent();
                for _ in 0..3 {
                    match p {
                        Some(d) if std::fs::remove_dir(d).is_ok() => p = d.parent(),
                        _ => break,
                    }
                }
                removed.push(dir);
            }
            Err(e) => errors.push(StorageError::io(&dir, e)),
        }
    }
    Ok((removed, errors))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::layout::hour_dir;

    #[test]
    fn deletes_whole_expired_hours_but_not_hours_in_use() {
        let root = std::env::temp_dir().join(format!("ibs-ret-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let now = 1_763_800_000_000_000_000i64;
        let day = 24 * HOUR_NS;
        let hours = [
            now - 10 * day,
            now - 3 * day - 2 * HOUR_NS,
            now - 2 * day,
            now - HOUR_NS,
        ];
        for h in hours {
            let d = hour_dir(&root, Format::Binary, crate::storage::layout::hour_start(h));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("1_last_0000000000000001.bin"), b"x").unwrap();
        }
        let in_use = [crate::storage::layout::hour_start(hours[1])];
        let (removed, errors) = expire(&root, Format::Binary, 3, now, &in_use).unwrap();
        assert!(errors.is_empty());
        assert_eq!(removed.len(), 1, "{removed:?}");
        let left: Vec<i64> = hour_dirs(&root, Format::Binary)
            .unwrap()
            .into_iter()
            .map(|x| x.0)
            .collect();
        assert_eq!(left.len(), 3);
        assert!(!left.contains(&crate::storage::layout::hour_start(hours[0])));
        // The emptied day/month directories went with it.
        assert!(!removed[0].parent().unwrap().exists());
        assert_eq!(
            expire(&root, Format::Binary, 0, now, &[]).unwrap().0.len(),
            0
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
