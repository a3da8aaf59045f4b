//! Where a client address is, from a MaxMind database (`risk.geoip`, GeoIP2 or
//! GeoLite2 City or Country), for the `country_changed` and `impossible_travel` risk
//! signals. The database is read into memory when the configuration is built; a lookup
//! is a walk of its search tree, no I/O. An address the database does not place
//! (private ranges, an unknown network) has no location and those signals stay silent.

use serde::Deserialize;
use std::net::IpAddr;
use std::path::Path;

/// A loaded database.
pub struct GeoIp {
    reader: maxminddb::Reader<Vec<u8>>,
}

impl std::fmt::Debug for GeoIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.reader.metadata();
        write!(f, "GeoIp({} built {})", m.database_type, m.build_epoch)
    }
}

/// What a lookup tells about an address.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Place {
    /// ISO 3166-1 alpha-2, upper case; `None` when the record has no country.
    pub country: Option<[u8; 2]>,
    /// Latitude, longitude (degrees) and the accuracy radius (km), when the record has
    /// coordinates (City databases).
    pub position: Option<(f64, f64, f64)>,
}

impl Place {
    /// The country code as text.
    pub fn country_code(&self) -> Option<&str> {
        self.country
            .as_ref()
            .and_then(|c| std::str::from_utf8(c).ok())
    }
}

// Only the fields we use, borrowed from the database: no allocation per lookup.
#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow, default)]
    country: Option<CountryRecord<'a>>,
    #[serde(default)]
    location: Option<LocationRecord>,
}

#[derive(Deserialize)]
struct CountryRecord<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct LocationRecord {
    #[serde(default)]
    latitude: Option<f64>,
    #[serde(default)]
    longitude: Option<f64>,
    #[serde(default)]
    accuracy_radius: Option<u16>,
}

impl GeoIp {
    /// Reads and checks the database at `path`.
    pub fn open(path: &Path) -> Result<GeoIp, String> {
        let reader = maxminddb::Reader::open_readfile(path).map_err(|e| e.to_string())?;
        let kind = &reader.metadata().database_type;
        if !(kind.contains("City") || kind.contains("Country")) {
            return Err(format!(
                "is a {kind:?} database; country_changed and impossible_travel need a City or Country database"
            ));
        }
        Ok(GeoIp { reader })
    }

    /// The English name of the country `ip` is in (else its code), for people: the
    /// sessions page.
    pub fn country_name(&self, ip: IpAddr) -> Option<String> {
        #[derive(Deserialize)]
        struct Names<'a> {
            #[serde(borrow, default)]
            en: Option<&'a str>,
        }
        #[derive(Deserialize)]
        struct Named<'a> {
            #[serde(borrow, default)]
            iso_code: Option<&'a str>,
            #[serde(borrow, default)]
            names: Option<Names<'a>>,
        }
        #[derive(Deserialize)]
        struct Rec<'a> {
            #[serde(borrow, default)]
            country: Option<Named<'a>>,
        }
        let found = self.reader.lookup(ip).ok()?;
        let c = found.decode::<Rec<'_>>().ok()??.country?;
        c.names
            .and_then(|n| n.en)
            .or(c.iso_code)
            .map(str::to_string)
    }

    /// Where `ip` is, when the database places it.
    pub fn locate(&self, ip: IpAddr) -> Option<Place> {
        let found = self.reader.lookup(ip).ok()?;
        let record: Record<'_> = found.decode().ok()??;
        let country = record
            .country
            .and_then(|c| c.iso_code)
            .and_then(|c| <[u8; 2]>::try_from(c.as_bytes()).ok())
            .map(|c| c.map(|b| b.to_ascii_uppercase()));
        let position = record.location.and_then(|l| {
            let (lat, lon) = (l.latitude?, l.longitude?);
            Some((lat, lon, f64::from(l.accuracy_radius.unwrap_or(0))))
        });
        (country.is_some() || position.is_some()).then_some(Place { country, position })
    }
}

/// Great-circle distance in km between two (latitude, longitude) points in degrees
/// (haversine, mean Earth radius).
pub fn distance_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    const EARTH_RADIUS_KM: f64 = 6371.0;
    let (lat1, lat2) = (a.0.to_radians(), b.0.to_radians());
    let dlat = lat2 - lat1;
    let dlon = (b.1 - a.1).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// How far apart two places surely are: the distance less both accuracy radii (0 when
/// the circles overlap or a place has no coordinates).
pub fn surely_apart_km(a: &Place, b: &Place) -> f64 {
    match (a.position, b.position) {
        (Some((la, oa, ra)), Some((lb, ob, rb))) => {
            (distance_km((la, oa), (lb, ob)) - ra - rb).max(0.0)
        }
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> GeoIp {
        GeoIp::open(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/geoip/test-city.mmdb"),
        )
        .unwrap()
    }

    #[test]
    fn documentation_ranges_are_placed_as_the_test_database_says() {
        let g = db();
        let london = g.locate("192.0.2.7".parse().unwrap()).unwrap();
        assert_eq!(london.country_code(), Some("GB"));
        let (lat, lon, r) = london.position.unwrap();
        assert!((lat - 51.5074).abs() < 1e-6 && (lon + 0.1278).abs() < 1e-6 && r == 5.0);
        assert_eq!(
            g.locate("198.51.100.1".parse().unwrap())
                .unwrap()
                .country_code(),
            Some("AU")
        );
        assert_eq!(
            g.locate("2001:db8:1::5".parse().unwrap())
                .unwrap()
                .country_code(),
            Some("FR")
        );
        assert_eq!(g.locate("10.0.0.1".parse().unwrap()), None, "not placed");
        assert_eq!(
            g.country_name("198.51.100.1".parse().unwrap()).as_deref(),
            Some("Australia")
        );
        assert_eq!(g.country_name("10.0.0.1".parse().unwrap()), None);
        assert_eq!(g.locate("2001:db8:2::1".parse().unwrap()), None);
    }

    #[test]
    fn distances_are_great_circle_kilometres() {
        let london = (51.5074, -0.1278);
        let sydney = (-33.8688, 151.2093);
        let d = distance_km(london, sydney);
        assert!((16_950.0..17_050.0).contains(&d), "{d}");
        assert!(distance_km(london, london) < 1e-9);
        let g = db();
        let a = g.locate("192.0.2.1".parse().unwrap()).unwrap();
        let b = g.locate("203.0.113.200".parse().unwrap()).unwrap();
        // London to Manchester is about 262 km; less 5 km of uncertainty each side.
        let apart = surely_apart_km(&a, &b);
        assert!((245.0..260.0).contains(&apart), "{apart}");
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.mmdb");
        std::fs::write(&p, b"not a database").unwrap();
        assert!(!GeoIp::open(&p).unwrap_err().is_empty());
        assert!(GeoIp::open(&dir.path().join("missing.mmdb")).is_err());
    }
}
