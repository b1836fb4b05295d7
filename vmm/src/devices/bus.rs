//! An address bus: ranges of port-I/O or MMIO addresses, each served by one device.
//!
//! The vCPU threads look up the device for each guest access; the bus itself is built
//! before the vCPUs start and never changes after.

use std::sync::{Arc, Mutex};

/// A device reachable through a [`Bus`]; offsets are relative to the device's base.
pub trait BusDevice: Send {
    /// Fills `data` from the device at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` to the device at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus: device range {base:#x}+{len:#x} is empty or wraps around")]
    InvalidRange { base: u64, len: u64 },
    #[error("bus: device range {base:#x}+{len:#x} overlaps the device at {other:#x}")]
    Overlap { base: u64, len: u64, other: u64 },
}

struct BusRange {
    base: u64,
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// Address ranges mapped to devices.
#[derive(Default)]
pub struct Bus {
    ranges: Vec<BusRange>,
}

impl Bus {
    pub fn new() -> Self {
        Bus::default()
    }

    /// Places `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: Arc<Mutex<dyn BusDevice>>, base: u64, len: u64) -> Result<(), BusError> {
        let end = base.checked_add(len).filter(|_| len > 0).ok_or(BusError::InvalidRange { base, len })?;
        if let Some(other) = self.ranges.iter().find(|r| base < r.base + r.len && r.base < end) {
            return Err(BusError::Overlap { base, len, other: other.base });
        }
        let at = self.ranges.partition_point(|r| r.base < base);
        self.ranges.insert(at, BusRange { base, len, device });
        Ok(())
    }

    /// The device whose range holds the whole access `[addr, addr + size)`, and the offset.
    fn resolve(&self, addr: u64, size: usize) -> Option<(&BusRange, u64)> {
        let at = self.ranges.partition_point(|r| r.base <= addr).checked_sub(1)?;
        let range = self.ranges.get(at)?;
        let offset = addr - range.base;
        let end = offset.checked_add(size as u64)?;
        (end <= range.len).then_some((range, offset))
    }

    /// Reads from the device at `addr`; `false` (and `data` untouched) when there is none.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((range, offset)) => {
                range.device.lock().unwrap_or_else(|p| p.into_inner()).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Writes to the device at `addr`; `false` when there is none.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((range, offset)) => {
                range.device.lock().unwrap_or_else(|p| p.into_inner()).write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Remembers the last write; reads return the offset.
    #[derive(Default)]
    struct Probe {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_accesses_to_the_device_with_its_offset() {
        let mut bus = Bus::new();
        let a = Arc::new(Mutex::new(Probe::default()));
        let b = Arc::new(Mutex::new(Probe::default()));
        bus.insert(b.clone(), 0x3f8, 8).unwrap();
        bus.insert(a.clone(), 0x60, 5).unwrap();
        let mut data = [0u8; 1];
        assert!(bus.read(0x3fd, &mut data));
        assert_eq!(data, [5]);
        assert!(bus.write(0x64, &[0xfe]));
        assert_eq!(a.lock().unwrap().last_write, Some((4, vec![0xfe])));
        assert!(b.lock().unwrap().last_write.is_none());
    }

    #[test]
    fn accesses_outside_or_straddling_a_device_find_nothing() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Probe::default())), 0x1000, 0x10).unwrap();
        let mut data = [0xaau8; 4];
        assert!(!bus.read(0xfff, &mut data[..1]));
        assert!(!bus.read(0x1010, &mut data));
        assert!(!bus.read(0x100e, &mut data), "straddles the end");
        assert!(!bus.write(u64::MAX, &data));
        assert_eq!(data, [0xaa; 4]);
    }

    #[test]
    fn refuses_overlapping_and_empty_ranges() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Probe::default())), 0x1000, 0x1000).unwrap();
        let dev = Arc::new(Mutex::new(Probe::default()));
        assert_eq!(bus.insert(dev.clone(), 0x1fff, 2), Err(BusError::Overlap { base: 0x1fff, len: 2, other: 0x1000 }));
        assert_eq!(bus.insert(dev.clone(), 0x800, 0x801), Err(BusError::Overlap { base: 0x800, len: 0x801, other: 0x1000 }));
        assert!(matches!(bus.insert(dev.clone(), 0x10, 0), Err(BusError::InvalidRange { .. })));
        assert!(matches!(bus.insert(dev.clone(), u64::MAX, 2), Err(BusError::InvalidRange { .. })));
        bus.insert(dev, 0x2000, 0x1000).unwrap();
    }
}
