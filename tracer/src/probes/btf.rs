//! Struct member offsets from the kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! aya-ebpf cannot emit CO-RE relocations, so where a kernel program needs a field of a kernel
//! struct, the collector looks its offset up here and passes it as a global. A missing field
//! yields `None` and the program falls back to its slower path.

use std::collections::HashMap;

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

struct Member {
    name_off: u32,
    type_id: u32,
    /// Offset in bits.
    bit_offset: u32,
}

struct Type {
    kind: u32,
    name_off: u32,
    members: Vec<Member>,
    /// For structs and unions: the size in bytes; for arrays: the element type; for
    /// modifiers/typedefs: the referenced type.
    ref_type: u32,
}

pub struct KernelBtf {
    strings: Vec<u8>,
    types: Vec<Type>,
    by_name: HashMap<String, usize>,
    /// Enumerator name → value (C enumerators share one namespace).
    enumerators: HashMap<String, i64>,
}

impl KernelBtf {
    pub fn load() -> Option<Self> {
        Self::parse(&std::fs::read("/sys/kernel/btf/vmlinux").ok()?)
    }

    pub fn parse(data: &[u8]) -> Option<Self> {
        let u16_at = |o: usize| Some(u16::from_le_bytes(data.get(o..o + 2)?.try_into().ok()?));
        let u32_at = |o: usize| Some(u32::from_le_bytes(data.get(o..o + 4)?.try_into().ok()?));
        if u16_at(0)? != BTF_MAGIC {
            return None;
        }
        let hdr_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)?
            .to_vec();
        // Type ids start at 1; slot 0 is `void`.
        let mut types = vec![Type {
            kind: 0,
            name_off: 0,
            members: Vec::new(),
            ref_type: 0,
        }];
        let mut enumerators: Vec<(u32, i64)> = Vec::new();
        let mut o = hdr_len + type_off;
        let end = o + type_len;
        while o + 12 <= end {
            let name_off = u32_at(o)?;
            let info = u32_at(o + 4)?;
            let size_or_type = u32_at(o + 8)?;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            o += 12;
            let mut members = Vec::new();
            let extra = match kind {
                1 => 4,  // INT
                3 => 12, // ARRAY
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = o + i * 12;
                        let raw = u32_at(m + 8)?;
                        members.push(Member {
                            name_off: u32_at(m)?,
                            type_id: u32_at(m + 4)?,
                            bit_offset: if kind_flag { raw & 0x00ff_ffff } else { raw },
                        });
                    }
                    vlen * 12
                }
                6 => {
                    for i in 0..vlen {
                        let e = o + i * 8;
                        let v = u32_at(e + 4)? as i32 as i64;
                        enumerators.push((u32_at(e)?, v));
                    }
                    vlen * 8
                } // ENUM
                13 => vlen * 8,  // FUNC_PROTO
                14 => 4,         // VAR
                15 => vlen * 12, // DATASEC
                17 => 4,         // DECL_TAG
                19 => {
                    for i in 0..vlen {
                        let e = o + i * 12;
                        let v =
                            (u64::from(u32_at(e + 8)?) << 32 | u64::from(u32_at(e + 4)?)) as i64;
                        enumerators.push((u32_at(e)?, v));
                    }
                    vlen * 12
                } // ENUM64
                _ => 0,          // PTR, FWD, TYPEDEF, modifiers, FUNC, FLOAT, TYPE_TAG
            };
            o += extra;
            let ref_type = if kind == KIND_ARRAY {
                u32_at(o - extra)?
            } else {
                size_or_type
            };
            types.push(Type {
                kind,
                name_off,
                members,
                ref_type,
            });
        }
        let mut btf = KernelBtf {
            strings,
            types,
            by_name: HashMap::new(),
            enumerators: HashMap::new(),
        };
        for (name_off, v) in enumerators {
            let name = btf.str_at(name_off).to_owned();
            btf.enumerators.entry(name).or_insert(v);
        }
        for (i, t) in btf.types.iter().enumerate() {
            if t.kind == KIND_STRUCT && t.name_off != 0 {
                let name = btf.str_at(t.name_off).to_owned();
                btf.by_name.entry(name).or_insert(i);
            }
        }
        Some(btf)
    }

    fn str_at(&self, off: u32) -> &str {
        let s = self.strings.get(off as usize..).unwrap_or_default();
        let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or("")
    }

    /// The value of an enumerator, such as `memory_cgrp_id`.
    pub fn enum_value(&self, name: &str) -> Option<i64> {
        self.enumerators.get(name).copied()
    }

    /// Size in bytes of `struct name`.
    pub fn struct_size(&self, name: &str) -> Option<u32> {
        let id = *self.by_name.get(name)?;
        Some(self.types.get(id)?.ref_type)
    }

    /// Byte offset of `field` in `struct name`, looking through anonymous struct/union members.
    pub fn member_offset(&self, name: &str, field: &str) -> Option<u32> {
        self.member(name, field).map(|(off, _)| off)
    }

    /// Byte offset of `field` in `struct name` if that field is an array of `struct elem`.
    pub fn array_member_offset(&self, name: &str, field: &str, elem: &str) -> Option<u32> {
        let (off, type_id) = self.member(name, field)?;
        let array = self.types.get(self.strip(type_id))?;
        if array.kind != KIND_ARRAY {
            return None;
        }
        let e = self.types.get(self.strip(array.ref_type as usize))?;
        (e.kind == KIND_STRUCT && self.str_at(e.name_off) == elem).then_some(off)
    }

    /// Byte offset of a nested field, `path` naming a member of `struct name`, then a member of
    /// that member's type (through typedefs, so `atomic_t`'s anonymous struct works), and so
    /// on: `path_offset("signal_struct", &["live", "counter"])`.
    pub fn path_offset(&self, name: &str, path: &[&str]) -> Option<u32> {
        let mut id = *self.by_name.get(name)?;
        let mut total = 0;
        for (i, field) in path.iter().enumerate() {
            let (off, type_id) = self.find(id, field, 0)?;
            total += off;
            if i + 1 < path.len() {
                id = self.strip(type_id);
            }
        }
        Some(total)
    }

    fn member(&self, name: &str, field: &str) -> Option<(u32, usize)> {
        let id = *self.by_name.get(name)?;
        self.find(id, field, 0)
    }

    fn find(&self, id: usize, field: &str, base_bits: u32) -> Option<(u32, usize)> {
        let t = self.types.get(id)?;
        for m in &t.members {
            let bits = base_bits + m.bit_offset;
            if m.name_off != 0 {
                if self.str_at(m.name_off) == field {
                    return bits
                        .is_multiple_of(8)
                        .then_some((bits / 8, m.type_id as usize));
                }
                continue;
            }
            let inner = self.strip(m.type_id as usize);
            if matches!(
                self.types.get(inner).map(|t| t.kind),
                Some(KIND_STRUCT | KIND_UNION)
            ) && let Some(found) = self.find(inner, field, bits)
            {
                return Some(found);
            }
        }
        None
    }

    /// Follows typedefs and modifiers to the underlying type.
    fn strip(&self, mut id: usize) -> usize {
        for _ in 0..16 {
            match self.types.get(id).map(|t| t.kind) {
                Some(8..=11) | Some(18) => id = self.types[id].ref_type as usize,
                _ => break,
            }
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_task_struct_fields_on_this_kernel() {
        let btf = KernelBtf::load().expect("this kernel has BTF");
        let nvcsw = btf.member_offset("task_struct", "nvcsw").expect("nvcsw");
        let nivcsw = btf.member_offset("task_struct", "nivcsw").expect("nivcsw");
        assert_eq!(nivcsw, nvcsw + 8, "the two counters are adjacent");
        let exit_code = btf
            .member_offset("task_struct", "exit_code")
            .expect("exit_code");
        assert!(exit_code > 0 && exit_code < 16384);
        assert_eq!(btf.member_offset("task_struct", "no_such_field"), None);
        // struct percpu_counter { raw_spinlock_t lock; s64 count; ... }: at least 16 bytes.
        let size = btf.struct_size("percpu_counter").expect("percpu_counter");
        let count = btf.member_offset("percpu_counter", "count").expect("count");
        assert!(
            count >= 4 && count + 8 <= size,
            "count at {count} of {size}"
        );
        let rss = btf
            .member_offset("mm_struct", "rss_stat")
            .expect("rss_stat");
        // An array of percpu_counter since 6.2; a struct of atomics before.
        let percpu = btf.array_member_offset("mm_struct", "rss_stat", "percpu_counter");
        assert_eq!(percpu.is_some(), kernel_at_least(6, 2), "{percpu:?}");
        if let Some(off) = percpu {
            assert_eq!(off, rss);
        }
        // Renamed in 5.14; the offset the sched_switch programs read.
        let state = btf
            .member_offset("task_struct", "__state")
            .or_else(|| btf.member_offset("task_struct", "state"));
        assert!(state.is_some_and(|s| s < 64), "{state:?}");
        let live = btf.member_offset("signal_struct", "live").expect("live");
        assert!(live > 0 && live < 1024, "{live}");
        // atomic_t is a typedef of an anonymous struct whose `counter` comes first.
        assert_eq!(
            btf.path_offset("signal_struct", &["live", "counter"]),
            Some(live)
        );
        assert_eq!(btf.path_offset("signal_struct", &["live", "nope"]), None);
        assert_eq!(
            btf.array_member_offset("mm_struct", "rss_stat", "task_struct"),
            None
        );
        assert_eq!(btf.array_member_offset("task_struct", "pid", "x"), None);
        assert_eq!(btf.member_offset("no_such_struct", "x"), None);
        // enum cgroup_subsys_id: cpuset, cpu, cpuacct, io come first on Debian's configs.
        let memory = btf.enum_value("memory_cgrp_id").expect("memory_cgrp_id");
        assert!((1..16).contains(&memory), "{memory}");
        assert_eq!(btf.enum_value("no_such_enumerator"), None);
        assert_eq!(btf.member_offset("cgroup_subsys_state", "cgroup"), Some(0));
        assert_eq!(btf.member_offset("css_set", "subsys"), Some(0));
    }

    fn kernel_at_least(major: u32, minor: u32) -> bool {
        let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut it = rel
            .trim()
            .split(['.', '-'])
            .map(|p| p.parse::<u32>().unwrap_or(0));
        let (a, b) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
        (a, b) >= (major, minor)
    }

    #[test]
    fn rejects_garbage() {
        assert!(KernelBtf::parse(b"not btf at all").is_none());
        assert!(KernelBtf::parse(&[]).is_none());
    }
}
