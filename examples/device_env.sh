# device_env.sh — sourced (`. examples/device_env.sh`) on a machine that has a GPU and the CUDA
# toolkit but none of hero's Debian packages and no network: unpacks the packages kept in .debs/
# (made beforehand with `make device-debs` on a Debian 12 machine) under $HERO_DEBROOT, without
# touching the system, and exports what the build and the specs need to find them:
#   PATH, LD_LIBRARY_PATH, LUA_PATH/LUA_CPATH (busted and its modules), OPAL_PREFIX (OpenMPI moved
#   out of /usr), and HERO_MAKE_ARGS: the csrc/Makefile variables that point at the unpacked
#   headers and libraries (Lua, OpenBLAS, zlib, MPI).
# Without .debs/ it leaves the environment alone and the build finds what the system has.
HERO_MAKE_ARGS=${HERO_MAKE_ARGS:-}
if [ -d .debs ] && ls .debs/*.deb >/dev/null 2>&1; then
  HERO_DEBROOT=${HERO_DEBROOT:-/tmp/hero-debroot}
  mkdir -p "$HERO_DEBROOT"
  for deb in .debs/*.deb; do dpkg -x "$deb" "$HERO_DEBROOT" || echo "device_env: could not unpack $deb" >&2; done
  multiarch=usr/lib/x86_64-linux-gnu
  libdir=$HERO_DEBROOT/$multiarch
  # Debian points these at /usr or /lib (alternatives, an absolute symbolic link): point them here.
  ln -sf "$HERO_DEBROOT/lib/x86_64-linux-gnu/libz.so.1" "$libdir/libz.so"
  ln -sf orterun "$HERO_DEBROOT/usr/bin/mpirun"
  ln -sf orterun "$HERO_DEBROOT/usr/bin/mpiexec"
  export PATH="$HERO_DEBROOT/usr/bin:$PATH"
  export LD_LIBRARY_PATH="$libdir:$libdir/openblas-pthread:$libdir/openmpi/lib:$HERO_DEBROOT/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export OPAL_PREFIX="$HERO_DEBROOT/usr"
  export HERO_DEB_LUA_PATH="$HERO_DEBROOT/usr/share/lua/5.4/?.lua;$HERO_DEBROOT/usr/share/lua/5.4/?/init.lua"
  export HERO_DEB_LUA_CPATH="$libdir/lua/5.4/?.so"
  HERO_MAKE_ARGS="$HERO_MAKE_ARGS LUA_INCDIR=$HERO_DEBROOT/usr/include/lua5.4"
  HERO_MAKE_ARGS="$HERO_MAKE_ARGS OPENBLAS_CFLAGS=-I$HERO_DEBROOT/usr/include/x86_64-linux-gnu/openblas-pthread"
  HERO_MAKE_ARGS="$HERO_MAKE_ARGS OPENBLAS_LIBS=-L$libdir/openblas-pthread\ -L$libdir\ -lopenblas"
  HERO_MAKE_ARGS="$HERO_MAKE_ARGS HERO_MPI=1 MPI_CFLAGS_FOUND=-I$libdir/openmpi/include"
  HERO_MAKE_ARGS="$HERO_MAKE_ARGS MPI_LIBS_FOUND=-L$libdir/openmpi/lib\ -lmpi"
  echo "device_env: Debian packages from .debs unpacked under $HERO_DEBROOT"
fi
export HERO_MAKE_ARGS
