//! Pure types and rules, no I/O: webhook events and their signatures, how
//! events change what DAARION wants for a person, and Matrix localparts.

pub mod agent;
pub mod city;
pub mod event;
pub mod localpart;
pub mod matrix;
pub mod person;
pub mod signature;
