// Opening and verifying a compiled bundle (bundle.cpp).
#pragma once
#include <string>

#include "internal.h"
#include "json.h"

namespace es {

struct Manifest {
  std::string dir;         // as given, without a trailing slash
  std::string model_file;  // manifest's model_file
  std::string model_path;  // resolved path of the model file
  Json json;
};

// Read manifest.json and (verify) check every listed file; throws Failure(ES_ERR_BUNDLE / ES_ERR_TAMPERED).
Manifest open_manifest(const std::string& dir, bool verify);
// Refuse an artifact this host cannot run (ELF machine, non-CPU kind, CPU flags): Failure(ES_ERR_TARGET).
void check_target(const Manifest& b);
int elf_machine(const std::string& path);

}  // namespace es
