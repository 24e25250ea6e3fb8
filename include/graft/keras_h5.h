// Keras .h5 files (HDF5), read through libhdf5's C API, in the two layouts Keras 2 writes
// (keras/saving/legacy/hdf5_format.py: save_model_to_hdf5, save_weights_to_hdf5_group):
//
//   full model   root attrs keras_version, backend, model_config (JSON); group model_weights with attr
//                layer_names, one group per layer with attr weight_names, datasets at
//                model_weights/<layer>/<weight name> (e.g. model_weights/conv1/conv1/kernel:0)
//   weights only root attrs layer_names (and keras_version, backend), groups <layer>/<weight name>, as the
//                Keras applications ship them (mobilenet_2_5_224_tf.h5, *_tf_dim_ordering_tf_kernels.h5)
//
// String attributes may be variable-length (h5py 3) or fixed-length byte strings (older h5py / Keras);
// both are read. Weight order comes from weight_names, never from HDF5's alphabetical iteration order.
//
// libhdf5 is not safe on hostile files (tests/fuzz/README.md, "libhdf5": a segfault and an endless loop
// on a corrupt global heap), so by default the file is read in a forked child process with a deadline and
// a memory limit; the tensors come back through a pipe. A crash or hang there is a FormatError here.
#pragma once
#include <chrono>
#include <string>

#include "graft/keras.h"

namespace graft {

struct KerasH5Options {
  // Read in a child process (the default). In-process reading is for the fuzzer, which needs libhdf5's
  // code in its own address space to see coverage and sanitizer reports.
  bool separate_process = true;
  // How long the child may take; zero means 60 s plus 1 s per 20 MB of file.
  std::chrono::milliseconds timeout{0};
};

// Reads every layer's weights as float32 tensors in Keras layout, and the topology when the file has one.
// Throws FormatError naming the file and the HDF5 path (attribute or dataset) on anything malformed, and
// on a reader process that crashed or ran past its deadline.
KerasModel read_keras_h5(const std::string& path, const KerasH5Options& options = {});

}  // namespace graft
