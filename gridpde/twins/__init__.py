"""Plain-numpy twins of the numba kernels: the references the tests compare them with.

A twin computes what its kernel computes, by the formula written out with
dense numpy arrays (the (T, N) softmax weights, the (M, n, n) tilted
weights, whole padded lines of cells) and none of the kernel's tricks
(factorised exponentials, chunks, private copies, passes that avoid the
dense matrices). Each kernel has a test that it agrees with its twin, to
round-off. Twins are for tests (and the benchmarks' numpy baseline) only:
they are slow and their memory grows with targets x sources, so use small
sizes. (Not to be confused with a parallel kernel's serial build, see
:mod:`gridpde._numba`.)

Production modules never import this package; twins import what they share
with the kernels (constants, the vectorised Langevin function, the table's
argument packing) from the production modules.

:mod:`gridpde.twins.attention`, the attention kernels:

    reference_velocity          gridpde.attention.direct.direct_velocity
                                (blocked; also the benchmarks' baseline)
    tensor_velocity_numpy       gridpde.attention.tensor.tensor_velocity
    tensor_velocity_jvp_numpy   the linearisation of tensor_velocity (checks the VJP by duality)
    tensor_velocity_vjp_numpy   gridpde.attention.tensor_vjp.tensor_velocity_vjp
    direct_velocity_jvp_numpy   the linearisation of direct_velocity (checks the VJP by duality)
    direct_velocity_vjp_numpy   gridpde.attention.direct_vjp.direct_velocity_vjp
    evaluate_numpy              gridpde.attention.table.evaluate
    evaluate_vjp_numpy          gridpde.attention.table.evaluate_vjp

:mod:`gridpde.twins.transport`, the finite-volume kernels:

    fv_rhs_numpy                gridpde.grid.transport.Transport.rhs
    slope_coeffs_numpy          gridpde.grid.transport.slope_and_coeffs (vectorised)
    transport_jvp_numpy         the linearisation of Transport.rhs, whose transpose is
                                gridpde.grid.transport_vjp.TransportVJP
"""
