//! candle tensors as host inputs: borrowed in place when contiguous and of the posterior's type,
//! gathered or widened otherwise, every value checked against the tensor's own elements.

use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};
use laplace_update::candle::{TensorMatrix, labels, to_tensor};
use laplace_update::{CpuDevice, Error, FitConfig, HostMatrix, Link, Posterior, Structure};

/// The address of element `offset` of a CPU tensor's storage.
fn storage_address(t: &Tensor, offset: usize) -> usize {
    let (storage, _) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => v[offset..].as_ptr() as usize,
        candle_core::Storage::Cpu(candle_core::CpuStorage::F64(v)) => v[offset..].as_ptr() as usize,
        _ => panic!("not an f32 or f64 CPU tensor"),
    }
}

fn values(rows: usize, cols: usize) -> Vec<f32> {
    (0..rows * cols).map(|i| ((i * 37) % 101) as f32 / 16.0 - 3.0).collect()
}

#[test]
fn contiguous_tensors_are_borrowed_in_place() {
    // A user-sized batch: 20,000 × 768 f32 (61 MB).
    let (rows, cols) = (20_000, 768);
    let t = Tensor::from_vec(values(rows, cols), (rows, cols), &Device::Cpu).unwrap();
    let m = TensorMatrix::<f32>::new(&t).unwrap();
    assert!(m.is_borrowed());
    let view = m.view();
    assert_eq!((view.rows(), view.cols()), (rows, cols));
    assert_eq!(view.data().as_ptr() as usize, storage_address(&t, 0));
    drop(m);
    // A block of rows is still contiguous: borrowed at its offset.
    let block = t.narrow(0, 100, 50).unwrap();
    let m = TensorMatrix::<f32>::new(&block).unwrap();
    assert!(m.is_borrowed());
    assert_eq!(m.view().data().as_ptr() as usize, storage_address(&t, 100 * cols));
    assert_eq!(m.view().row(3), &values(rows, cols)[103 * cols..104 * cols]);
    // f64 into an f64 posterior.
    let t64 = Tensor::from_vec(vec![1.5f64, -2.0, 0.25, 8.0, 3.0, 1e-300], (3, 2), &Device::Cpu).unwrap();
    let m = TensorMatrix::<f64>::new(&t64).unwrap();
    assert!(m.is_borrowed());
    assert_eq!(m.view().data().as_ptr() as usize, storage_address(&t64, 0));
}

#[test]
fn strided_tensors_are_gathered_in_row_major_order() {
    let (rows, cols) = (37, 300);
    let data = values(rows, cols);
    let t = Tensor::from_vec(data.clone(), (rows, cols), &Device::Cpu).unwrap();
    // The transpose: element (j, i) of the view is data[i·cols + j].
    let tt = t.t().unwrap();
    let m = TensorMatrix::<f32>::new(&tt).unwrap();
    assert!(!m.is_borrowed());
    let v = m.view();
    assert_eq!((v.rows(), v.cols()), (cols, rows));
    for j in 0..cols {
        for i in 0..rows {
            assert_eq!(v.data()[j * rows + i], data[i * cols + j]);
        }
    }
    // A column block: strided rows.
    let columns = t.narrow(1, 7, 11).unwrap();
    let m = TensorMatrix::<f32>::new(&columns).unwrap();
    assert!(!m.is_borrowed());
    for i in 0..rows {
        assert_eq!(m.view().row(i), &data[i * cols + 7..i * cols + 18]);
    }
}

#[test]
fn half_precision_and_other_float_types_are_widened_exactly() {
    let (rows, cols) = (64, 513);
    let data = values(rows, cols);
    let halves: Vec<f16> = data.iter().map(|&v| f16::from_f32(v)).collect();
    let brains: Vec<bf16> = data.iter().map(|&v| bf16::from_f32(v)).collect();
    let th = Tensor::from_vec(halves.clone(), (rows, cols), &Device::Cpu).unwrap();
    let tb = Tensor::from_vec(brains.clone(), (rows, cols), &Device::Cpu).unwrap();
    let m = TensorMatrix::<f32>::new(&th).unwrap();
    assert!(!m.is_borrowed());
    assert!(m.view().data().iter().zip(&halves).all(|(a, h)| *a == h.to_f32()));
    let m = TensorMatrix::<f64>::new(&tb).unwrap();
    assert!(m.view().data().iter().zip(&brains).all(|(a, h)| *a == h.to_f64()));
    // f32 into f64 exactly, f64 into f32 rounded to nearest.
    let t = Tensor::from_vec(data.clone(), (rows, cols), &Device::Cpu).unwrap();
    let m = TensorMatrix::<f64>::new(&t).unwrap();
    assert!(m.view().data().iter().zip(&data).all(|(a, b)| *a == f64::from(*b)));
    let wide: Vec<f64> = data.iter().map(|&v| f64::from(v) + 1e-12).collect();
    let t = Tensor::from_vec(wide.clone(), (rows, cols), &Device::Cpu).unwrap();
    let m = TensorMatrix::<f32>::new(&t).unwrap();
    assert!(m.view().data().iter().zip(&wide).all(|(a, b)| *a == *b as f32));
}

#[test]
fn wrong_ranks_and_types_are_typed_errors() {
    let cube = Tensor::zeros((2, 3, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        TensorMatrix::<f32>::new(&cube),
        Err(Error::ShapeMismatch { argument: "tensor", .. })
    ));
    let ints = Tensor::zeros((2, 3), DType::U32, &Device::Cpu).unwrap();
    assert!(matches!(
        TensorMatrix::<f32>::new(&ints),
        Err(Error::InvalidArgument { argument: "tensor", .. })
    ));
    let floats = Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        labels(&floats),
        Err(Error::InvalidArgument { argument: "labels", .. })
    ));
    assert!(matches!(
        labels(&ints),
        Err(Error::ShapeMismatch { argument: "labels", .. })
    ));
    assert!(matches!(
        to_tensor(vec![0.0f32; 5], 2, 3),
        Err(Error::ShapeMismatch { .. })
    ));
}

#[test]
fn labels_of_every_integer_type_and_stride() {
    let want: Vec<i64> = vec![3, 0, 9, 4, 4, 1];
    for dtype in [DType::U8, DType::U32, DType::I16, DType::I32, DType::I64] {
        let t = Tensor::new(want.as_slice(), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        assert_eq!(labels(&t).unwrap(), want, "{dtype:?}");
    }
    // Every other element of a longer tensor: a stride of 2.
    let doubled: Vec<u32> = want.iter().flat_map(|&v| [v as u32, 99]).collect();
    let t = Tensor::new(doubled.as_slice(), &Device::Cpu)
        .unwrap()
        .reshape((6, 2))
        .unwrap();
    let column = t.narrow(1, 0, 1).unwrap().squeeze(1).unwrap();
    assert_eq!(labels(&column).unwrap(), want);
}

/// A fit and a prediction from tensors equal the same from host slices of the same values,
/// and the results go back to candle without a copy.
#[test]
fn posteriors_from_tensors_match_posteriors_from_slices() {
    let (n, d, k) = (200, 48, 5);
    let phi = values(n, d);
    let head: Vec<f32> = (0..k * d).map(|i| ((i * 13) % 7) as f32 / 20.0 - 0.15).collect();
    let y: Vec<u32> = (0..n as u32).map(|i| (i * 7) % k as u32).collect();
    let cpu = CpuDevice::new(1).unwrap();
    let config = FitConfig {
        structure: Structure::Kron,
        ..Default::default()
    };
    let reference = Posterior::fit(
        &cpu,
        HostMatrix::new(&phi, n, d).unwrap(),
        &y,
        HostMatrix::new(&head, k, d).unwrap(),
        None,
        &config,
    )
    .unwrap();
    let tphi = Tensor::from_vec(phi.clone(), (n, d), &Device::Cpu).unwrap();
    let thead = Tensor::from_vec(head.clone(), (k, d), &Device::Cpu).unwrap();
    let ty = Tensor::new(y.as_slice(), &Device::Cpu).unwrap();
    let features = TensorMatrix::<f32>::new(&tphi).unwrap();
    let post = Posterior::fit(
        &cpu,
        features.view(),
        &labels(&ty).unwrap(),
        TensorMatrix::new(&thead).unwrap().view(),
        None,
        &config,
    )
    .unwrap();
    assert_eq!(post.precision().unwrap(), reference.precision().unwrap());
    let (a, b) = (
        post.predict(features.view(), Link::default()).unwrap(),
        reference
            .predict(HostMatrix::new(&phi, n, d).unwrap(), Link::default())
            .unwrap(),
    );
    assert_eq!(a.probs, b.probs);
    let address = a.probs.as_ptr() as usize;
    let probs = to_tensor(a.probs, n, k).unwrap();
    assert_eq!(probs.dims(), &[n, k]);
    assert_eq!(storage_address(&probs, 0), address, "the vector became the storage");
}
