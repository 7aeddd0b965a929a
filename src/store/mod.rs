//! The database's pages: the page format, the data file, the buffer pool, redo, the B+tree.

pub mod btree;
pub mod buffer_pool;
pub mod control;
pub mod data_file;
pub mod database;
pub mod node;
pub mod page;
pub mod redo;
pub mod value;
