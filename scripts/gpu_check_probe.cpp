// scripts/gpu_check.sh's helper, linked against the CUDA build's libcaffe (built by
// `scripts/gpu_check.sh --prepare`; it travels to the GPU machine, where the venv's pycaffe,
// made for this machine's Python, cannot run).
//
//   gpu_check_probe compare NET GPU   forward + backward of NET (TEST phase, force_backward) with
//                                     Caffe's seeded fillers and seeded inputs, on the CPU and then
//                                     on GPU (-1: the CPU again, for a dry run); prints for every
//                                     blob and parameter the largest difference relative to the
//                                     CPU values' largest magnitude, and the worst of them.
//   gpu_check_probe makedb DIR N C H W   an LMDB of N Datum records (C x H x W bytes, labels
//                                     i % 10), deterministic content, as Caffe's Data layer reads.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "boost/scoped_ptr.hpp"
#include "caffe/caffe.hpp"
#include "caffe/util/db.hpp"
#include "caffe/util/math_functions.hpp"

using caffe::Blob;
using caffe::Caffe;
using caffe::Net;
using std::string;
using std::vector;

typedef vector<vector<float> > Values;

// Every blob's data, then every blob's diff, then every parameter's diff (names in `names`).
static Values snapshot(const Net<float>& net, vector<string>* names) {
  Values values;
  names->clear();
  const vector<string>& blob_names = net.blob_names();
  for (int pass = 0; pass < 2; ++pass) {
    for (int i = 0; i < blob_names.size(); ++i) {
      const Blob<float>& blob = *net.blobs()[i];
      const float* p = pass == 0 ? blob.cpu_data() : blob.cpu_diff();
      values.push_back(vector<float>(p, p + blob.count()));
      names->push_back(blob_names[i] + (pass == 0 ? " data" : " diff"));
    }
  }
  for (int i = 0; i < net.layers().size(); ++i) {
    for (int j = 0; j < net.layers()[i]->blobs().size(); ++j) {
      const Blob<float>& blob = *net.layers()[i]->blobs()[j];
      values.push_back(vector<float>(blob.cpu_diff(), blob.cpu_diff() + blob.count()));
      names->push_back(net.layer_names()[i] + "[" + std::to_string(j) + "] param diff");
    }
  }
  return values;
}

static Values forward_backward(Net<float>* net, vector<string>* names) {
  net->ClearParamDiffs();  // Caffe's backward adds to parameter gradients
  net->Forward();
  net->Backward();
  return snapshot(*net, names);
}

static int compare(const string& net_file, int gpu) {
  Caffe::set_mode(Caffe::CPU);
  Caffe::set_random_seed(1701);
  Net<float> net(net_file, caffe::TEST);
  Blob<float>* data = net.blob_by_name("data").get();
  caffe::caffe_rng_uniform<float>(data->count(), -100.f, 100.f, data->mutable_cpu_data());
  if (net.has_blob("label")) {
    Blob<float>* label = net.blob_by_name("label").get();
    for (int i = 0; i < label->count(); ++i) label->mutable_cpu_data()[i] = i % 10;
  }
  vector<string> names;
  const Values cpu = forward_backward(&net, &names);
  if (gpu >= 0) {
    Caffe::SetDevice(gpu);
    Caffe::set_mode(Caffe::GPU);
  }
  const Values other = forward_backward(&net, &names);
  double worst = 0;
  string worst_name;
  for (int i = 0; i < cpu.size(); ++i) {
    double scale = 0, diff = 0;
    for (int j = 0; j < cpu[i].size(); ++j) {
      scale = std::max(scale, std::fabs(static_cast<double>(cpu[i][j])));
      diff = std::max(diff, std::fabs(static_cast<double>(cpu[i][j]) - other[i][j]));
    }
    const double rel = scale > 0 ? diff / scale : diff;
    printf("blob %-28s max_rel %.3e (max |cpu| %.3e)\n", names[i].c_str(), rel, scale);
    if (rel >= worst) {
      worst = rel;
      worst_name = names[i];
    }
  }
  printf("worst %s max_rel %.3e\n", worst_name.c_str(), worst);
  return 0;
}

static int makedb(const string& dir, int n, int c, int h, int w) {
  boost::scoped_ptr<caffe::db::DB> db(caffe::db::GetDB("lmdb"));
  db->Open(dir, caffe::db::NEW);
  boost::scoped_ptr<caffe::db::Transaction> txn(db->NewTransaction());
  caffe::Datum datum;
  datum.set_channels(c);
  datum.set_height(h);
  datum.set_width(w);
  string bytes(static_cast<size_t>(c) * h * w, '\0');
  unsigned int state = 12345;
  for (int i = 0; i < n; ++i) {
    for (size_t j = 0; j < bytes.size(); ++j) {
      state = state * 1103515245u + 12345u;  // any fixed bytes do; this is quick and repeatable
      bytes[j] = static_cast<char>(state >> 24);
    }
    datum.set_data(bytes);
    datum.set_label(i % 10);
    char key[16];
    snprintf(key, sizeof(key), "%08d", i);
    string value;
    datum.SerializeToString(&value);
    txn->Put(key, value);
    if ((i + 1) % 500 == 0) {
      txn->Commit();
      txn.reset(db->NewTransaction());
    }
  }
  txn->Commit();
  db->Close();
  printf("wrote %d records of %dx%dx%d to %s\n", n, c, h, w, dir.c_str());
  return 0;
}

int main(int argc, char** argv) {
  FLAGS_minloglevel = 1;
  ::google::InitGoogleLogging(argv[0]);
  const string usage = "usage: gpu_check_probe compare NET GPU | makedb DIR N C H W";
  if (argc == 4 && string(argv[1]) == "compare") return compare(argv[2], atoi(argv[3]));
  if (argc == 7 && string(argv[1]) == "makedb") {
    return makedb(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), atoi(argv[6]));
  }
  fprintf(stderr, "%s\n", usage.c_str());
  return 2;
}
