# What `cmake --install` puts where, and the .deb that scripts/package.sh builds from it with CPack.
#
#   bin/pdlb, bin/pdlb-sim, bin/pdlb-bench
#   lib/systemd/system/pdlb.service   (PDLB_SYSTEMD_UNIT_DIR; ExecStart names the installed pdlb)
#   etc/pdlb/pdlb.toml                (the full SYSCONFDIR: /etc when the prefix is /usr; a conffile)
#   share/man/man1/pdlb.1             (help2man from `pdlb --help`, when help2man is installed)
#   share/doc/pdlb/                   (README and docs/)
#
# Other parts of the tree (tools/, say) add their own install() rules next to their targets; they end
# up in the same package.
include(GNUInstallDirs)

set(PDLB_SYSTEMD_UNIT_DIR "lib/systemd/system" CACHE STRING
    "Where the systemd unit is installed (relative to the prefix, or absolute: the .deb uses /lib/systemd/system)")

install(TARGETS pdlb pdlb-sim RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
if(TARGET pdlb-bench)
  install(TARGETS pdlb-bench RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()

# The unit as shipped names /usr/bin/pdlb (the .deb); another prefix gets its own path.
file(READ ${PROJECT_SOURCE_DIR}/configs/pdlb.service PDLB_UNIT_TEXT)
string(REPLACE "/usr/bin/pdlb " "${CMAKE_INSTALL_FULL_BINDIR}/pdlb " PDLB_UNIT_TEXT "${PDLB_UNIT_TEXT}")
string(REPLACE "/etc/pdlb/" "${CMAKE_INSTALL_FULL_SYSCONFDIR}/pdlb/" PDLB_UNIT_TEXT "${PDLB_UNIT_TEXT}")
file(GENERATE OUTPUT ${CMAKE_BINARY_DIR}/install/pdlb.service CONTENT "${PDLB_UNIT_TEXT}")
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/configs/pdlb.service)
install(FILES ${CMAKE_BINARY_DIR}/install/pdlb.service DESTINATION ${PDLB_SYSTEMD_UNIT_DIR})
install(FILES ${PROJECT_SOURCE_DIR}/configs/pdlb.toml DESTINATION ${CMAKE_INSTALL_FULL_SYSCONFDIR}/pdlb)

find_program(HELP2MAN help2man)
if(HELP2MAN)
  add_custom_command(
    OUTPUT ${CMAKE_BINARY_DIR}/install/pdlb.1
    COMMAND ${HELP2MAN} --no-info --no-discard-stderr --section 1
            --name "load balancer for SGLang prefill/decode disaggregation"
            --include ${PROJECT_SOURCE_DIR}/docs/pdlb.h2m
            --output ${CMAKE_BINARY_DIR}/install/pdlb.1 $<TARGET_FILE:pdlb>
    DEPENDS pdlb ${PROJECT_SOURCE_DIR}/docs/pdlb.h2m
    # Compressed, as Debian installs man pages (-n: no time stamp, so the package is reproducible).
    COMMAND gzip -9nf -k ${CMAKE_BINARY_DIR}/install/pdlb.1
    BYPRODUCTS ${CMAKE_BINARY_DIR}/install/pdlb.1.gz
    COMMENT "Writing the pdlb.1 man page with help2man")
  add_custom_target(pdlb_man ALL DEPENDS ${CMAKE_BINARY_DIR}/install/pdlb.1)
  install(FILES ${CMAKE_BINARY_DIR}/install/pdlb.1.gz DESTINATION ${CMAKE_INSTALL_MANDIR}/man1)
else()
  message(STATUS "pdlb: help2man not found (apt-get install help2man): no man page")
endif()

install(FILES ${PROJECT_SOURCE_DIR}/README.md ${PROJECT_SOURCE_DIR}/LICENSE DESTINATION ${CMAKE_INSTALL_DOCDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/docs/ DESTINATION ${CMAKE_INSTALL_DOCDIR} FILES_MATCHING PATTERN "*.md")

# The .deb (scripts/package.sh: configure with -DCMAKE_INSTALL_PREFIX=/usr, build, then cpack -G DEB).
set(CPACK_PACKAGE_NAME pdlb)
set(CPACK_PACKAGE_VENDOR "pdlb")
set(CPACK_PACKAGE_CONTACT "pdlb maintainers <pdlb@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "load balancer for SGLang prefill/decode disaggregated serving")
set(CPACK_PACKAGE_DESCRIPTION "pdlb sits in front of SGLang prefill and decode workers, pairs them per request
and relays the answer, streams included. A drop-in for SGLang's minilb, with a systemd unit
(readiness, watchdog, reload), a TOML configuration file, and the pdlb-sim simulated worker and
pdlb-bench load generator.")
set(CPACK_RESOURCE_FILE_LICENSE ${PROJECT_SOURCE_DIR}/LICENSE)
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGING_INSTALL_PREFIX ${CMAKE_INSTALL_PREFIX})
# The unit and the config file have absolute destinations.
set(CPACK_SET_DESTDIR ON)
set(CPACK_STRIP_FILES ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)  # pdlb_<version>_<arch>.deb
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)  # Depends: from dpkg-shlibdeps
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    ${PROJECT_SOURCE_DIR}/packaging/debian/conffiles
    ${PROJECT_SOURCE_DIR}/packaging/debian/postinst
    ${PROJECT_SOURCE_DIR}/packaging/debian/prerm
    ${PROJECT_SOURCE_DIR}/packaging/debian/postrm)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
set(CPACK_OUTPUT_FILE_PREFIX ${PROJECT_SOURCE_DIR}/dist)
include(CPack)
