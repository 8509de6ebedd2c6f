//! What wgpu sees: every adapter on every backend, with its limits and features.

use std::fmt;

/// One adapter's description.
#[derive(Clone, Debug)]
pub struct AdapterReport {
    /// Name, vendor, device type, backend and driver.
    pub info: wgpu::AdapterInfo,
    /// The adapter's limits.
    pub limits: wgpu::Limits,
    /// The adapter's optional features.
    pub features: wgpu::Features,
}

impl AdapterReport {
    /// Whether this adapter is a CPU emulation (lavapipe, llvmpipe, WARP, SwiftShader).
    pub fn is_cpu_emulation(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }
}

impl fmt::Display for AdapterReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.info;
        let l = &self.limits;
        writeln!(f, "{} ({:?}, {:?}{})", i.name, i.backend, i.device_type, if self.is_cpu_emulation() { ", CPU emulation" } else { "" })?;
        writeln!(f, "  driver: {} {}", i.driver, i.driver_info)?;
        writeln!(
            f,
            "  limits: storage binding {} MiB, buffer {} MiB, storage buffers/stage {}, workgroup memory {} KiB, invocations/workgroup {}, workgroup size {}x{}x{}, workgroups/dim {}, immediates {} B",
            l.max_storage_buffer_binding_size >> 20,
            l.max_buffer_size >> 20,
            l.max_storage_buffers_per_shader_stage,
            l.max_compute_workgroup_storage_size >> 10,
            l.max_compute_invocations_per_workgroup,
            l.max_compute_workgroup_size_x,
            l.max_compute_workgroup_size_y,
            l.max_compute_workgroup_size_z,
            l.max_compute_workgroups_per_dimension,
            l.max_immediate_size,
        )?;
        writeln!(f, "  subgroup size {}..{}", i.subgroup_min_size, i.subgroup_max_size)?;
        write!(f, "  features: {:?}", self.features)
    }
}

/// Every adapter on every backend wgpu was built with.
pub fn adapters() -> Vec<AdapterReport> {
    let instance = wgpu::Instance::default();
    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
        .into_iter()
        .map(|a| AdapterReport { info: a.get_info(), limits: a.limits(), features: a.features() })
        .collect()
}
