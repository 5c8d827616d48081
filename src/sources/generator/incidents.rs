//! The generator's incidents as the lifecycle model sees them.
//!
//! In: the configured [`Incident`]s, resolved once per source into table indices ([`Resolved`]),
//! and one order's region and warehouse. Out: that order's [`Disruptions`]: the extra shipping
//! delay of a warehouse backlog, and the exception time and extra transit of a carrier collapse.

use rand_chacha::ChaCha8Rng;

use super::lifecycle::{between, chance, Disruptions, CARRIERS, HOUR, REGIONS, WAREHOUSES};
use super::Incident;

/// An incident with its names resolved to table indices (`None`: matches nothing).
#[derive(Clone, Debug)]
pub(super) enum Resolved {
    Collapse {
        carrier: Option<usize>,
        region: Option<usize>,
        from: i64,
        to: i64,
        extra: i64,
        p: f64,
    },
    Backlog {
        warehouse: Option<(usize, usize)>,
        from: i64,
        to: i64,
        extra: i64,
    },
}

impl Resolved {
    /// Resolves the incident's carrier, region and warehouse names (ignoring ASCII case).
    pub(super) fn new(incident: &Incident) -> Self {
        let find =
            |table: &[&str], name: &str| table.iter().position(|x| x.eq_ignore_ascii_case(name));
        match incident {
            Incident::CarrierCollapse {
                carrier,
                region,
                from_ms,
                to_ms,
                extra_delay_ms,
                probability,
            } => Resolved::Collapse {
                carrier: find(&CARRIERS, carrier),
                region: find(&REGIONS, region),
                from: *from_ms,
                to: *to_ms,
                extra: *extra_delay_ms,
                p: *probability,
            },
            Incident::WarehouseBacklog {
                warehouse,
                from_ms,
                to_ms,
                extra_ship_delay_ms,
            } => Resolved::Backlog {
                warehouse: (0..4).find_map(|r| find(&WAREHOUSES[r], warehouse).map(|w| (r, w))),
                from: *from_ms,
                to: *to_ms,
                extra: *extra_ship_delay_ms,
            },
        }
    }
}

/// Incidents as seen by one order (its region and warehouse).
pub(super) struct OrderIncidents<'a> {
    pub(super) incidents: &'a [Resolved],
    pub(super) region: usize,
    pub(super) warehouse: usize,
}

impl Disruptions for OrderIncidents<'_> {
    fn ship_delay(&self, planned: i64) -> i64 {
        self.incidents
            .iter()
            .map(|i| match i {
                Resolved::Backlog {
                    warehouse: Some(w),
                    from,
                    to,
                    extra,
                } if *w == (self.region, self.warehouse) && (*from..*to).contains(&planned) => {
                    *extra
                }
                _ => 0,
            })
            .sum()
    }
    fn transit_delay(
        &self,
        rng: &mut ChaCha8Rng,
        carrier: usize,
        shipped: i64,
        arrival: i64,
    ) -> Option<(i64, i64)> {
        for i in self.incidents {
            if let Resolved::Collapse {
                carrier: Some(c),
                region: Some(r),
                from,
                to,
                extra,
                p,
            } = i
            {
                if *c == carrier
                    && *r == self.region
                    && shipped < *to
                    && arrival > *from
                    && chance(rng, *p)
                {
                    return Some((shipped.max(*from) + between(rng, 0, 6 * HOUR), *extra));
                }
            }
        }
        None
    }
}
