#![allow(deprecated)] // burn 0.22 deprecates ndarray (and TensorData::to_vec); the issue asks for ndarray
//! Misuse of the burn module gets a typed error before any work: wrong shapes, lengths out of
//! range, states of the wrong shape, tensors on different devices, a device no engine serves.

use burn::tensor::{Device, DeviceKind, Tensor};
use wgpu_rnn::{Error, Mode};
use wgpu_rnn_burn::{FusedRnn, FusedRnnConfig};

fn lstm(device: &Device) -> FusedRnn {
    FusedRnnConfig::new(Mode::Lstm, 3, 4).init(5, device).unwrap()
}

fn err(r: wgpu_rnn::Result<wgpu_rnn_burn::module::FusedRnnOutput>) -> Error {
    match r {
        Err(e) => e,
        Ok(_) => panic!("misuse accepted"),
    }
}

#[test]
fn bad_inputs_get_typed_errors() {
    let d = Device::ndarray();
    let m = lstm(&d);
    let x = Tensor::<3>::ones([5, 2, 3], &d);
    assert!(matches!(err(m.forward(Tensor::<3>::ones([5, 2, 4], &d), None, None)), Error::ShapeMismatch { .. }));
    for lengths in [&[5usize, 0][..], &[6, 5], &[5], &[5, 5, 5]] {
        let e = err(m.forward(x.clone(), Some(lengths), None));
        assert!(matches!(e, Error::InvalidLengths(_) | Error::InvalidConfig(_) | Error::ShapeMismatch { .. }), "lengths {lengths:?}: {e}");
    }
    // h0, c0 [L*D, B, H]: one state, or a wrong shape.
    let h0 = Tensor::<3>::zeros([1, 2, 4], &d);
    assert!(matches!(err(m.forward(x.clone(), None, Some(vec![h0.clone()]))), Error::InvalidConfig(_)));
    assert!(matches!(err(m.forward(x.clone(), None, Some(vec![h0.clone(), Tensor::<3>::zeros([1, 3, 4], &d)]))), Error::ShapeMismatch { .. }));
    // And the good call works.
    let out = m.forward(x, Some(&[5, 3]), Some(vec![h0.clone(), h0])).unwrap();
    assert_eq!(out.output.dims(), [5, 2, 4]);
}

#[test]
fn devices_no_engine_serves_or_that_differ_are_refused() {
    // burn's wgpu runtime brought up without init_wgpu: wgpu-rnn does not hold its device.
    let wgpu = Device::wgpu(DeviceKind::DefaultDevice);
    let m = lstm(&wgpu);
    let e = err(m.forward(Tensor::<3>::ones([2, 1, 3], &wgpu), None, None));
    assert!(matches!(&e, Error::Unsupported(m) if m.contains("init_wgpu")), "{e}");
    // Weights on ndarray, input elsewhere.
    let cpu = Device::ndarray();
    let m = lstm(&cpu);
    let e = err(m.forward(Tensor::<3>::ones([2, 1, 3], &wgpu), None, None));
    assert!(matches!(e, Error::Unsupported(_) | Error::InvalidConfig(_)), "{e}");
    let (served, _) = wgpu_rnn_burn::init_wgpu(Device::wgpu_options().device_kind(DeviceKind::Cpu)).unwrap();
    let e = err(m.forward(Tensor::<3>::ones([2, 1, 3], &served), None, None));
    assert!(matches!(e, Error::InvalidConfig(_)), "{e}");
}
