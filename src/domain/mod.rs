//! Pure types and rules, no I/O: webhook events and their signatures, how
//! events change what DAARION wants for a person, Matrix localparts, and
//! the one HTML policy.

pub mod agent;
pub mod city;
pub mod event;
pub mod html;
pub mod localpart;
pub mod matrix;
pub mod media_link;
pub mod person;
pub mod signature;
