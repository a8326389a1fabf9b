//! DAARION's APIs as this service calls them: the listings of DAARION
//! Auth's users and DAARION.city's rooms ([`listings`]), and the sender of
//! what happens in Matrix to DAARION.city's `CITY_EVENTS_URL`
//! ([`city_events`]). Each client's errors name the party that failed.

use std::time::Duration;

pub mod city_events;
pub mod listings;
pub mod login;

pub use city_events::{CityEvents, DeliveryError};
pub use listings::{Listed, ListingApi, ListingError, ListingProblem, Page, RoomApi, UserApi};
pub use login::{LoginAnswer, LoginApi, LoginUser};

/// How long one request to DAARION may take, answer included.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The HTTP client both clients use.
fn client() -> reqwest::Result<reqwest::Client> {
    crate::outbound::client(TIMEOUT).build()
}
