# Find Eigen 3.4: first the cmeel-eigen wheel from build-system.requires (it installs
# cmeel.prefix/share/eigen3/cmake/Eigen3Config.cmake under site-packages, a prefix that
# find_package does not search by itself), then a system Eigen, else stop with a clear message.
if(NOT TARGET Eigen3::Eigen)
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c
      "import importlib.metadata as m, pathlib\nfor f in (m.files('cmeel-eigen') or []):\n    if str(f).endswith('Eigen3Config.cmake'):\n        print(pathlib.Path(f.locate()).resolve().parent); break"
    OUTPUT_VARIABLE _attnkit_cmeel_eigen_dir
    OUTPUT_STRIP_TRAILING_WHITESPACE
    ERROR_QUIET)
  if(_attnkit_cmeel_eigen_dir)
    find_package(Eigen3 3.4 QUIET CONFIG PATHS "${_attnkit_cmeel_eigen_dir}" NO_DEFAULT_PATH)
  endif()
  if(NOT Eigen3_FOUND)
    find_package(Eigen3 3.4 QUIET CONFIG)
  endif()
  if(NOT Eigen3_FOUND)
    message(FATAL_ERROR
      "attnkit needs Eigen 3.4. Install the PyPI wheel 'cmeel-eigen' in the build environment "
      "(it is listed in build-system.requires, so a plain 'pip install .' brings it), or a system "
      "Eigen (Debian: apt-get install libeigen3-dev), or pass -DEigen3_DIR=<dir with Eigen3Config.cmake>.")
  endif()
  message(STATUS "attnkit: Eigen ${Eigen3_VERSION} from ${Eigen3_DIR}")
endif()
