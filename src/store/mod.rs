//! The database's pages: the page format, the data file, the B+tree.

pub mod buffer_pool;
pub mod data_file;
pub mod page;
pub mod redo;
