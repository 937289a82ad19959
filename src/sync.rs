//! The one way overhear takes a lock.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, using the data even if a thread panicked while holding it. Every lock in
/// overhear guards data changed in single steps (a line appended or taken whole, an entry pushed
/// or removed), so a panic elsewhere cannot leave it torn; going on beats losing the output.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
