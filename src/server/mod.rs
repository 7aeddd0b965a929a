//! The client-facing server: RESP (the Redis protocol). Today: the protocol codec; the server
//! loop and the commands arrive with the database (issue 3).

pub mod resp;
