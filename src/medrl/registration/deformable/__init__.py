"""Learned deformable registration (issue 12): a U-Net predicts a stationary velocity field,
scaling and squaring integrates it into a diffeomorphism, and the regularisation weight lambda
is learned by bilevel optimisation.

Modules, one concept each:

* :mod:`.network` the velocity U-Net; :mod:`.integrate` scaling and squaring, warping;
* :mod:`.losses` NCC, MIND-SSC, diffusion, Dice, TRE, Jacobian determinant;
* :mod:`.synthetic` known random warps; :mod:`.pairs` the built-in training/validation pairs;
* :mod:`.bilevel` hypergradient of lambda and grid search; :mod:`.train` the training loop;
* :mod:`.frames` working grid and world displacement fields; :mod:`.model_folder` model files;
* :mod:`.evaluation` hard Dice, HD95, TRE of world transforms;
* :mod:`.method` the ``"deformable"`` method of :data:`medrl.registration.base.METHODS`
  (registered on import of this package).

See ``docs/deformable.md``.
"""

from medrl.registration.deformable.method import register_deformable

__all__ = ["register_deformable"]
