// pybind11 module mta_ext._align: numpy in, numpy out, no torch types. The merge runs with the
// GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "align.h"
#include "ids_offsets.h"

namespace py = pybind11;
using I64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

namespace {

template <typename T>
py::array_t<T> to_numpy(std::vector<T>&& v, std::vector<py::ssize_t> shape) {
  auto* heap = new std::vector<T>(std::move(v));
  py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>(shape, heap->data(), owner);
}

mta_align::SideView side_view(const I64Array& offsets, const I64Array& mask, const char* name) {
  const std::string n(name);
  if (offsets.ndim() != 3 || offsets.shape(2) != 2) {
    throw py::value_error(n + "_offsets must have shape [B, T, 2], got ndim " +
                          std::to_string(offsets.ndim()));
  }
  if (mask.ndim() != 2 || mask.shape(0) != offsets.shape(0) || mask.shape(1) != offsets.shape(1)) {
    throw py::value_error(n + "_mask must have shape [B, T] = [" +
                          std::to_string(offsets.shape(0)) + ", " +
                          std::to_string(offsets.shape(1)) + "] like " + n + "_offsets");
  }
  return {offsets.data(), mask.data(), offsets.shape(0), offsets.shape(1), name};
}

void set_window(const std::optional<I64Array>& window, py::ssize_t B, mta_align::SideView& sv) {
  if (!window.has_value()) return;
  if (window->ndim() != 2 || window->shape(0) != B || window->shape(1) != 2) {
    throw py::value_error(std::string(sv.name) + "_window must have shape [B, 2] = [" +
                          std::to_string(B) + ", 2]");
  }
  sv.window = window->data();
}

py::list align(const std::vector<std::string>& texts, const I64Array& teacher_offsets,
               const I64Array& teacher_mask, const I64Array& student_offsets,
               const I64Array& student_mask,
               const std::vector<std::tuple<std::string, I64Array, I64Array>>& units,
               int num_threads, const std::optional<I64Array>& teacher_window,
               const std::optional<I64Array>& student_window) {
  auto teacher = side_view(teacher_offsets, teacher_mask, "teacher");
  auto student = side_view(student_offsets, student_mask, "student");
  const auto B = static_cast<py::ssize_t>(texts.size());
  if (teacher.batch != B || student.batch != B) {
    throw py::value_error("batch size mismatch: " + std::to_string(B) + " texts, " +
                          std::to_string(teacher.batch) + " teacher rows, " +
                          std::to_string(student.batch) + " student rows");
  }
  set_window(teacher_window, B, teacher);
  set_window(student_window, B, student);
  std::vector<mta_align::UnitsView> views;
  for (const auto& [name, cu, spans] : units) {
    if (cu.ndim() != 1 || cu.shape(0) != B + 1) {
      throw py::value_error("units['" + name + "']: cu must have shape [B+1] = [" +
                            std::to_string(B + 1) + "]");
    }
    if (spans.ndim() != 2 || spans.shape(1) != 2) {
      throw py::value_error("units['" + name + "']: spans must have shape [M, 2]");
    }
    views.push_back({cu.data(), spans.data(), spans.shape(0), name});
  }

  struct Compact {
    std::vector<int64_t> cu, spans, tr, sr, index;
    std::vector<int8_t> status;
  };
  std::vector<Compact> res(views.size());
  {
    py::gil_scoped_release release;
    auto raw = mta_align::align_batch(texts, teacher, student, views, num_threads);
    for (size_t g = 0; g < views.size(); ++g) {
      auto& r = raw[g];
      auto& c = res[g];
      c.cu.assign(B + 1, 0);
      for (py::ssize_t b = 0; b < B; ++b) c.cu[b + 1] = c.cu[b] + r.kept[b];
      const int64_t n = c.cu[B];
      c.spans.resize(2 * n);
      c.tr.resize(2 * n);
      c.sr.resize(2 * n);
      c.index.resize(n);
      int64_t k = 0;
      for (int64_t j = 0; j < views[g].count; ++j) {
        if (r.status[j] != mta_align::kKept) continue;
        c.spans[2 * k] = views[g].spans[2 * j];
        c.spans[2 * k + 1] = views[g].spans[2 * j + 1];
        c.tr[2 * k] = r.teacher_ranges[2 * j];
        c.tr[2 * k + 1] = r.teacher_ranges[2 * j + 1];
        c.sr[2 * k] = r.student_ranges[2 * j];
        c.sr[2 * k + 1] = r.student_ranges[2 * j + 1];
        c.index[k] = j;
        ++k;
      }
      c.status = std::move(r.status);
    }
  }

  py::list out;
  for (size_t g = 0; g < views.size(); ++g) {
    auto& c = res[g];
    const auto n = static_cast<py::ssize_t>(c.index.size());
    const auto m = static_cast<py::ssize_t>(c.status.size());
    py::dict d;
    d["cu_units"] = to_numpy(std::move(c.cu), {B + 1});
    d["spans"] = to_numpy(std::move(c.spans), {n, 2});
    d["teacher_ranges"] = to_numpy(std::move(c.tr), {n, 2});
    d["student_ranges"] = to_numpy(std::move(c.sr), {n, 2});
    d["kept_index"] = to_numpy(std::move(c.index), {n});
    d["status"] = to_numpy(std::move(c.status), {m});
    out.append(d);
  }
  return out;
}

// The piece table of one tokenizer (copied once), decoding batches of id sequences.
class PieceTable {
 public:
  PieceTable(const py::array_t<uint8_t, py::array::c_style | py::array::forcecast>& rest_bytes,
             const I64Array& rest_off,
             const py::array_t<uint8_t, py::array::c_style | py::array::forcecast>& first_bytes,
             const I64Array& first_off,
             const py::array_t<uint8_t, py::array::c_style | py::array::forcecast>& flags,
             const py::array_t<uint8_t, py::array::c_style | py::array::forcecast>& rest_sep) {
    const auto V = flags.size();
    if (rest_off.size() != V + 1 || first_off.size() != V + 1 || rest_sep.size() != V) {
      throw py::value_error("PieceTable: rest_off / first_off need V+1 = " + std::to_string(V + 1) +
                            " entries and rest_sep V, got " + std::to_string(rest_off.size()) +
                            ", " + std::to_string(first_off.size()) + ", " +
                            std::to_string(rest_sep.size()));
    }
    rest_bytes_.assign(rest_bytes.data(), rest_bytes.data() + rest_bytes.size());
    first_bytes_.assign(first_bytes.data(), first_bytes.data() + first_bytes.size());
    rest_off_.assign(rest_off.data(), rest_off.data() + rest_off.size());
    first_off_.assign(first_off.data(), first_off.data() + first_off.size());
    flags_.assign(flags.data(), flags.data() + V);
    rest_sep_.assign(rest_sep.data(), rest_sep.data() + V);
    for (py::ssize_t v = 0; v < V; ++v) {
      if (rest_off_[v] < 0 || rest_off_[v + 1] < rest_off_[v] || first_off_[v] < 0 ||
          first_off_[v + 1] < first_off_[v] ||
          rest_off_[v + 1] > static_cast<int64_t>(rest_bytes_.size()) ||
          first_off_[v + 1] > static_cast<int64_t>(first_bytes_.size()) ||
          rest_sep_[v] > rest_off_[v + 1] - rest_off_[v]) {
        throw py::value_error("PieceTable: bad offsets for id " + std::to_string(v));
      }
    }
    // Keep data() valid for empty tables.
    rest_bytes_.push_back(0);
    first_bytes_.push_back(0);
  }

  py::list decode(const std::vector<I64Array>& batch, bool skip_special) const {
    const mta_align::PieceTableView view{rest_bytes_.data(),
                                         rest_off_.data(),
                                         first_bytes_.data(),
                                         first_off_.data(),
                                         flags_.data(),
                                         rest_sep_.data(),
                                         static_cast<int64_t>(flags_.size())};
    std::vector<mta_align::IdsDecoded> res(batch.size());
    std::vector<std::pair<const int64_t*, int64_t>> rows;
    for (size_t b = 0; b < batch.size(); ++b) {
      if (batch[b].ndim() != 1) {
        throw py::value_error("decode: ids[" + std::to_string(b) + "] must be 1-D");
      }
      rows.emplace_back(batch[b].data(), batch[b].shape(0));
    }
    {
      py::gil_scoped_release release;
      for (size_t b = 0; b < rows.size(); ++b) {
        try {
          res[b] = mta_align::decode_ids(view, rows[b].first, rows[b].second, skip_special);
        } catch (const std::invalid_argument& e) {
          throw std::invalid_argument("example " + std::to_string(b) + ": " + e.what());
        }
      }
    }
    py::list out;
    for (auto& r : res) {
      const auto n = static_cast<py::ssize_t>(r.offsets.size() / 2);
      out.append(py::make_tuple(py::str(r.text), to_numpy(std::move(r.offsets), {n, 2}), r.broken));
    }
    return out;
  }

  int64_t vocab() const { return static_cast<int64_t>(flags_.size()); }

 private:
  std::vector<uint8_t> rest_bytes_, first_bytes_, flags_, rest_sep_;
  std::vector<int64_t> rest_off_, first_off_;
};

}  // namespace

PYBIND11_MODULE(_align, m) {
  m.doc() = "Cross-tokenizer unit alignment engine (pure C++17, no torch).";
  m.def("align", &align, py::arg("texts"), py::arg("teacher_offsets"), py::arg("teacher_mask"),
        py::arg("student_offsets"), py::arg("student_mask"), py::arg("units"),
        py::arg("num_threads") = 0, py::arg("teacher_window") = py::none(),
        py::arg("student_window") = py::none(),
        R"doc(Align candidate units of a padded batch.

texts: list[str] (B). *_offsets: int64 [B, T, 2] char offsets; *_mask: int [B, T] (0/1, one
contiguous block per row). units: list of (name, cu int64 [B+1], spans int64 [M, 2]).
*_window: None or int64 [B, 2], per example the chars [lo, hi) that no token removed by
truncation overlaps; a unit reaching outside is dropped as truncated (None: the whole text).
Returns one dict per granularity: cu_units [B+1], spans [N, 2], teacher_ranges [N, 2],
student_ranges [N, 2] (rows of the flattened [B*T] axis of each side), kept_index [N] (index
into the input spans), status int8 [M] (0 kept, else the drop reason code).
Raises ValueError naming the argument and the example index on bad input.)doc");
  m.def(
      "is_space", [](uint32_t cp) { return mta_align::is_space(cp); }, py::arg("codepoint"),
      "Python's str.isspace() for one code point, as the engine sees it.");
  m.def("has_openmp", &mta_align::has_openmp);
  // The drop reasons of the status codes align() returns: {code: reason} for codes >= 1.
  py::dict reasons;
  for (int code = 1; code < mta_align::kNumStatus; ++code) {
    reasons[py::int_(code)] = mta_align::status_reason(static_cast<mta_align::Status>(code));
  }
  m.attr("REASONS") = reasons;
  m.attr("KEPT") = static_cast<int>(mta_align::kKept);
  py::class_<PieceTable>(m, "PieceTable",
                         "Per-id decoded bytes of one tokenizer (built by mta_ext.offsets).")
      .def(py::init<const py::array_t<uint8_t, py::array::c_style | py::array::forcecast>&,
                    const I64Array&,
                    const py::array_t<uint8_t, py::array::c_style | py::array::forcecast>&,
                    const I64Array&,
                    const py::array_t<uint8_t, py::array::c_style | py::array::forcecast>&,
                    const py::array_t<uint8_t, py::array::c_style | py::array::forcecast>&>(),
           py::arg("rest_bytes"), py::arg("rest_off"), py::arg("first_bytes"), py::arg("first_off"),
           py::arg("flags"), py::arg("rest_sep"))
      .def("decode", &PieceTable::decode, py::arg("ids"), py::arg("skip_special") = false,
           R"doc(Decode id sequences: ids is a list of int64 [n_b] arrays. Returns per sequence
(text: str, offsets: int64 [n_b, 2] code-point offsets into text, broken: int, the tokens that
got no offsets because their bytes are not valid UTF-8). Special tokens and broken pieces get
the empty span (p, p). Raises ValueError naming the example and position of an unknown id.)doc")
      .def_property_readonly("vocab", &PieceTable::vocab);
  m.def("choose_threads", &mta_align::choose_threads, py::arg("work"), py::arg("requested"),
        "Threads align() uses for work = B*(T_teacher+T_student) + UTF-8 bytes of the texts.");
}
