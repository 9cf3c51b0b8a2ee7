"""The output-length ranking predictor (docs/predictor.md).

- predictor_actor.scoring: score_prompts / predict_lengths, plain Python, cached (simulator)
- predictor_actor.actor: the shared, batching Ray actor (serving)
- predictor_actor.model: RankingModel.load(dir), the shipped default model directories
- predictor_actor.train / cli: training (`rankserve predictor train|eval`)
- predictor_actor.request_log: the request log the serving path writes for retraining
"""
