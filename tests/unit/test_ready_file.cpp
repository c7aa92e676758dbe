#include "pdlb/ready_file.hpp"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <system_error>

namespace {

namespace fs = std::filesystem;

// A fresh directory per test, removed afterwards.
class ReadyFile : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "pdlb-ready-unit-XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  void put(const std::string& name, const std::string& text) const { std::ofstream(path(name)) << text; }

  fs::path dir_;
};

TEST_F(ReadyFile, WrittenFileReadsBackWithAndWithoutBootstrapPort) {
  pdlb::write_ready_file(path("lb"), {"127.0.0.1", 8000, std::nullopt, std::nullopt});
  auto lb = pdlb::read_ready_file(path("lb"));
  ASSERT_TRUE(lb);
  EXPECT_EQ(lb->host, "127.0.0.1");
  EXPECT_EQ(lb->port, 8000);
  EXPECT_FALSE(lb->bootstrap_port);

  pdlb::write_ready_file(path("sim"), {"::1", 30000, 8998, std::nullopt});
  auto sim = pdlb::read_ready_file(path("sim"));
  ASSERT_TRUE(sim);
  EXPECT_EQ(sim->host, "::1");
  EXPECT_EQ(sim->port, 30000);
  EXPECT_EQ(sim->bootstrap_port, 8998);
  EXPECT_FALSE(sim->metrics_port);

  pdlb::write_ready_file(path("lb-metrics"), {"127.0.0.1", 8000, std::nullopt, 9100});
  auto with_metrics = pdlb::read_ready_file(path("lb-metrics"));
  ASSERT_TRUE(with_metrics);
  EXPECT_EQ(with_metrics->metrics_port, 9100);
}

TEST_F(ReadyFile, WriteLeavesOnlyTheFileItselfAndReplacesAnOldOne) {
  pdlb::write_ready_file(path("lb"), {"127.0.0.1", 1, std::nullopt, std::nullopt});
  pdlb::write_ready_file(path("lb"), {"127.0.0.1", 2, std::nullopt, std::nullopt});
  EXPECT_EQ(pdlb::read_ready_file(path("lb"))->port, 2);
  std::size_t files = 0;
  for ([[maybe_unused]] auto& e : fs::directory_iterator(dir_)) ++files;
  EXPECT_EQ(files, 1u);  // no temporary file left beside it
}

TEST_F(ReadyFile, WriteIntoAMissingDirectoryThrowsNamingThePath) {
  try {
    pdlb::write_ready_file(path("no-such-dir/lb"), {"127.0.0.1", 1, std::nullopt, std::nullopt});
    FAIL() << "no exception";
  } catch (const std::system_error& e) {
    EXPECT_NE(std::string(e.what()).find("no-such-dir"), std::string::npos) << e.what();
  }
}

TEST_F(ReadyFile, MissingIncompleteOrWrongFilesReadAsNotReady) {
  EXPECT_FALSE(pdlb::read_ready_file(path("absent")));
  put("partial", R"({"host": "127.0.0.1", "po)");
  EXPECT_FALSE(pdlb::read_ready_file(path("partial")));
  put("noport", R"({"host": "127.0.0.1"})");
  EXPECT_FALSE(pdlb::read_ready_file(path("noport")));
  put("bigport", R"({"host": "127.0.0.1", "port": 70000})");
  EXPECT_FALSE(pdlb::read_ready_file(path("bigport")));
  put("badboot", R"({"host": "127.0.0.1", "port": 1, "bootstrap_port": "x"})");
  EXPECT_FALSE(pdlb::read_ready_file(path("badboot")));
  put("array", "[1, 2]");
  EXPECT_FALSE(pdlb::read_ready_file(path("array")));
}

}  // namespace
